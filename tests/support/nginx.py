"""nginx from Debian's package, run with ``compose/nginx.conf`` as shipped: its upstream block pointed at the
given web processes and its server at a loopback port (tests/deploy, bench/web_nodes.py)."""

from __future__ import annotations

from pathlib import Path

from tests.support.processes import ROOT

TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_conf(root: Path, listen: int, web_ports: list[int], error_log: Path) -> Path:
    """A whole nginx.conf under ``root`` (created) wrapping compose/nginx.conf's site for ``web_ports``."""
    site = (ROOT / "compose" / "nginx.conf").read_text()
    servers = "\n".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in web_ports)
    lines = [line for line in site.splitlines() if not line.strip().startswith("server web")]
    site = "\n".join(lines).replace("    least_conn;", "    least_conn;\n" + servers)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    assert servers in site and f"127.0.0.1:{listen};" in site, "compose/nginx.conf changed shape"
    root.mkdir(parents=True)
    temp = "\n".join(f"    {kind}_temp_path {root}/{kind};" for kind in TEMP_KINDS)
    conf = root / "nginx.conf"
    conf.write_text(f"user root;\nworker_processes 1;\npid {root}/nginx.pid;\nerror_log {error_log} warn;\n"
                    f"events {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n{temp}\n{site}\n}}\n")
    return conf

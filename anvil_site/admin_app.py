"""django.contrib.admin's app config, with Anvil's site (its sign-in form reports throttling).

Apart from ``apps.py`` because INSTALLED_APPS imports it before any model exists, and the
site (``anvil_site/admin_site.py``) needs models: Django imports the site in ``ready()``.
"""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class AnvilAdminConfig(AdminConfig):
    default_site = "anvil_site.admin_site.AnvilAdminSite"

"""lm-eval's ``local-completions`` model runs a small local task through Anvil's front door to the worker:
loglikelihood (echo + logprobs, and the remote tokenizer's /tokenizer_info, /tokenize and /detokenize
relayed like every other path) and generation (stop strings), end to end, as real processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.inference_workers import register_worker
from tests.support.live import hrm_worker, until_routed
from tests.support.processes import child_env, running
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DATA = Path(__file__).parent / "lm_eval_data" / "questions.jsonl"

def _write_tasks(directory: Path) -> None:
    data = str(DATA)
    (directory / "anvil_choice.yaml").write_text(f"""task: anvil_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    (directory / "anvil_generate.yaml").write_text(f"""task: anvil_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 16
  temperature: 0
metric_list:
  - metric: exact_match
""")


def test_lm_eval_local_completions_runs_through_the_front_door(tmp_path: Path, anvil: str) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _write_tasks(tasks)
    key = create_key("lm-eval").secret
    with hrm_worker(tmp_path) as (port, _worker):
        register_worker("hrm-demo", port, "hrm-demo", tier="fast", context_limit=512)
        allow_tiers("fast")  # measured: lm-eval's completions are relayed without a commit window
        until_routed(anvil, key, {"hrm-demo": "allow"})
        out = tmp_path / "results"
        env = child_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                        HF_HOME=str(tmp_path / "hf"), OPENAI_API_KEY=key)
        eval_log = tmp_path / "lm_eval.log"
        with running([sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args",
                      f"base_url={anvil}/v1/completions,model=hrm-demo,tokenizer_backend=remote,max_length=512,"
                      f"num_concurrent=1,max_retries=1,timeout=60,auth_token={key}",
                      "--tasks", "anvil_choice,anvil_generate", "--include_path", str(tasks),
                      "--output_path", str(out), "--log_samples"], env, eval_log) as lm_eval:
            wait_for(lambda: lm_eval.poll() is not None, 300, "lm-eval to finish")
            assert lm_eval.returncode == 0, eval_log.read_text()[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert 0.0 <= results["anvil_choice"]["acc,none"] <= 1.0
    assert 0.0 <= results["anvil_generate"]["exact_match,none"] <= 1.0
    samples = [json.loads(line) for path in out.rglob("samples_anvil_choice_*.jsonl")
               for line in path.read_text().splitlines()]
    assert len(samples) == 4
    # Every choice was scored by the worker: a negative log-likelihood for each (lm-eval logs them as text).
    scores = [float(response[0][0]) for sample in samples for response in sample["resps"]]
    assert len(scores) == 12 and all(score < 0 for score in scores), samples[0]["resps"]
    drain_decisions()
    relayed = set(DecisionRecord.objects.filter(served_by="hrm-demo").values_list("endpoint", flat=True))
    assert {"completions", "tokenizer_info", "tokenize"} <= relayed

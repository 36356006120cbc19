"""EleutherAI's lm-evaluation-harness against a live server, as its users run it (heavy; ``pip install -e .[harness]``).

A tiny local generate_until task (YAML + JSONL written here, no downloads) runs through ``lm_eval`` with
``local-completions``' default model arguments: the harness finds ``/tokenizer_info`` and ``/tokenize``,
sends token-id prompts with its 5 ``until`` strings plus the EOS and ``seed=1234``. Its answers must not
depend on ``--batch_size`` and must equal what the server answers to the same request sent directly.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from api_test_utils import RecordingBackend, serving
from apps.api import create_app
from apps.api.backend import Chat
from cola_core.generate import GenerationConfig

pytestmark = [pytest.mark.heavy,
              pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                 reason="lm-evaluation-harness is not installed (pip install -e .[harness])")]

MODEL = "cola-dlm"
UNTIL = ["\n\n", "Question:", "</s>", "<|im_end|>", "Q:"]
QUESTIONS = ["The cat sat", "A dog ran", "Once upon a time", "Water is", "The sky"]
TASK = """task: cola_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: {until}
  max_gen_toks: 16
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_task(folder: Path) -> Path:
    folder.mkdir()
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "mat"}) + "\n" for q in QUESTIONS))
    (folder / "cola_tiny_gen.yaml").write_text(TASK.format(data=data, until=json.dumps(UNTIL)))
    return folder


def run_harness(tmp_path: Path, task: Path, name: str, model: str, url: str, *extra: str) -> list[dict]:
    """Run ``lm_eval`` offline; its logged samples in document order."""
    out = tmp_path / name
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", f"model={MODEL},base_url={url}",
               "--tasks", "cola_tiny_gen", "--include_path", str(task), "--output_path", str(out), "--log_samples",
               *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = next(out.rglob("samples_cola_tiny_gen_*.jsonl")).read_text().splitlines()
    return sorted((json.loads(line) for line in samples), key=lambda sample: sample["doc_id"])


def answers(samples: list[dict]) -> list[str]:
    return [sample["resps"][0][0] for sample in samples]


def test_the_harness_runs_generation_tasks_with_its_default_model_arguments(tiny_model, tmp_path):
    backend = RecordingBackend(tiny_model, defaults=GenerationConfig(steps=4))
    task = write_task(tmp_path / "task")
    runs = {"alone": ("local-completions", "/v1/completions"), "batched": ("local-completions", "/v1/completions",
            "--batch_size", "4"), "chat": ("local-chat-completions", "/v1/chat/completions", "--apply_chat_template")}
    samples, jobs = {}, {}
    with serving(create_app(backend)) as url:
        for name, (model, route, *extra) in runs.items():
            samples[name] = run_harness(tmp_path, task, name, model, url + route, *extra)
            jobs[name], backend.opened[:] = list(backend.opened), []
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        direct = [client.completions.create(model=MODEL, prompt=f"Q: {q}\nA:", max_tokens=16, temperature=0,
                                            seed=1234, stop=[*UNTIL, "<|endoftext|>"]).choices[0].text
                  for q in QUESTIONS]

    contexts = [sample["arguments"]["gen_args_0"]["arg_0"] for sample in samples["alone"]]
    assert contexts == [f"Q: {q}\nA:" for q in QUESTIONS]
    assert answers(samples["alone"]) == answers(samples["batched"]) == direct
    # the harness tokenised on the server and sent token ids, its until list plus the EOS, and its seed
    assert all(len(job.prompts) == 1 and isinstance(job.prompts[0], list) for job in jobs["alone"])
    assert all(job.stops == (*UNTIL, "<|endoftext|>") and job.config.seed == 1234 and job.max_tokens == 16
               for job in jobs["alone"])
    assert sorted(len(job.prompts) for job in jobs["batched"]) == [1, 4]
    assert len(samples["chat"]) == len(QUESTIONS) and all(isinstance(text, str) for text in answers(samples["chat"]))
    assert all(isinstance(job.prompts[0], Chat) and job.stops == tuple(UNTIL[:4]) for job in jobs["chat"])

"""The model card's benchmark: 8 tasks, the official templates, seeds and scorer, resumable and sharded.

``score_folder(DIR)`` + ``write_results(OUT, summary)`` score generated outputs exactly as the
official scorer does; ``run_bench(TASKS_DIR, OUT)`` generates them first. Formats: ``summary.json``
(:data:`SUMMARY_FORMAT`), ``bench.json`` (:data:`RUN_FORMAT`), per-task JSONL files (see
:mod:`.runner`).
"""
from .runner import (PROTOCOLS, BenchConfig, BenchResult, eos_index, evaluate_task, generate_records,
                     output_records, run_bench, stored_token_ids)
from .scorer import Scored, score_record
from .summary import (RUN_FORMAT, SUMMARY_FORMAT, Summary, TaskResult, load_summary, read_run_meta, score_folder,
                      score_task, write_results)
from .tasks import TASK_ORDER, BenchError, BenchItem, find_task_files, load_items, noise_id
from .templates import TEMPLATES

__all__ = ["run_bench", "BenchConfig", "BenchResult", "PROTOCOLS", "evaluate_task", "generate_records", "eos_index",
           "stored_token_ids", "output_records", "score_folder", "score_task", "write_results", "load_summary",
           "read_run_meta", "Summary", "TaskResult", "SUMMARY_FORMAT", "RUN_FORMAT", "score_record", "Scored", "TASK_ORDER",
           "TEMPLATES", "BenchError", "BenchItem", "find_task_files", "load_items", "noise_id"]

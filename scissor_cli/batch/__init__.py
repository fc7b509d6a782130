"""Batch mode: many (video, question) jobs with the model loaded once, streamed to a resumable JSONL file.

    jobs = jobs_from_paths(["videos/"], ["What is happening?"])      # scissor_cli.jobs; or jobs_from_manifest(...)
    summary = run_batch(lambda: load_model(profile.model), jobs, "results.jsonl", profile)

Output: one JSON line per job (``Answer.to_dict()`` plus ``id``, ``status``, the job's own fields, and the run's
``config`` with its ``config_hash``), written with one ``os.write`` of the whole line and ``fsync``'d as soon as the
job finishes. A job that fails records ``error`` and ``hint`` and the run goes on. ``output="-"`` streams the lines
to stdout instead (nothing to resume from).

Resume: a job is finished when the output holds a record with its ``id`` and ``status: "ok"``; those are skipped,
errored jobs are retried (after fixing a file, rerunning the command is the fix). One output holds one configuration:
before the model loads, every record's ``config`` must equal this run's (``run_config``: the settings that change an
answer), else ``OptionError`` names each differing setting. A trailing line without its newline (the process was
killed mid-write) is cut away on start. When a job ends up with several records (an error, then a retry), the file is
rewritten atomically at the end keeping one record per job: ok wins, else the latest.

Sweeps (``sweep=Sweep("retention", (1.0, 0.5, 0.1))``, the CLI's comma lists): one record per job and level, id
``<job id>@<axis>=<value>`` with a ``level`` field; every level of a video reuses its one decode + vision tower pass
(SCC runs per level). The levels are not part of ``config`` (``"sweep": <axis>`` is), so a rerun with more levels
resumes into the same output and runs only the missing (job, level) records; each resumed record's ``level`` is
checked instead.

Jobs about the same video share one decode + vision tower + SCC; up to ``batch_size`` questions (from one or
several videos) go through one ``generate`` call, which answers the same as one call per question (left padding).

Several processes (``torchrun`` / ``accelerate launch`` set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): every
rank reads the same output (+ part files) and computes the same pending list, a gloo barrier makes sure nobody
writes before everybody has read, and rank r answers the videos ``pending_videos[r::world_size]`` into
``<output>.part-<r>-of-<world>``. After a second barrier rank 0 merges every part file into the output and removes
them. Part files left by a killed run count as finished work on the next start and are merged at its end.

Safety (README "Reliability"): a run holds ``flock`` on ``<output>.lock`` (ranks > 0: on their part file's) from
before it reads until it returns, so a second run on the output stops with ManifestError naming the holder's PID.
``<output>.journal`` names the jobs in flight before each step (``_Journal``); a job in flight when two runs died
gets an error record instead of a third try. A failed write (ENOSPC, EROFS, ...) cuts the file back to whole
records and raises ManifestError saying how many jobs are saved; ``--overwrite`` replaces only scissor's own files.
Error records copy at most ``MAX_ERROR_FIELD`` characters of each text.

The package: ``records`` (the JSONL records, config and resume keys), ``safety`` (the output lock, the death
journal, write errors, which files may be overwritten), ``ranks`` (several processes), ``runner`` (``run_batch``);
the sweep levels are ``scissor_cli.sweep``.
"""

from __future__ import annotations

from scissor_cli.batch.ranks import dist_env, shard_device
from scissor_cli.batch.records import STDOUT, config_diff, config_hash, run_config
from scissor_cli.batch.runner import BatchSummary, BatchView, run_batch
from scissor_cli.batch.safety import journal_path, part_path, summary_path_for
from scissor_cli.jobs import Job, derive_id, jobs_from_manifest, jobs_from_paths
from scissor_cli.sweep import Sweep, parse_levels, sweep_from_flags

__all__ = [  # the job readers are re-exported: `from scissor_cli.batch import jobs_from_manifest, run_batch`
    "STDOUT", "BatchSummary", "BatchView", "Job", "Sweep", "config_diff", "config_hash", "derive_id", "dist_env",
    "jobs_from_manifest", "jobs_from_paths", "journal_path", "parse_levels", "part_path", "run_batch", "run_config",
    "shard_device", "summary_path_for", "sweep_from_flags",
]  # fmt: skip

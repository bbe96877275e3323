"""File jobs behind ``mrl-embed embed``: streaming readers, crash-safe writers, the checkpointed job, Ray.

Needs the ``[files]`` extra for Parquet and zstd (``[ray]`` for the Ray engine); ``import mrl_infer``
never imports this package.
"""

from mrl_infer.jobs._job import JobOptions, JobSummary, run_job

__all__ = ["JobOptions", "JobSummary", "run_job"]

"""`llama2 submit`: run a pipeline as a Ray job on a cluster, and look after submitted jobs.

    llama2 submit pretrain [--config F] [--set K=V]... [--only|--from|--until STAGE] [--force]
                  [--address URL] [--no-wait]        submit, print the job id, follow its logs
    llama2 submit --status JOB_ID | --logs JOB_ID | --follow JOB_ID | --stop JOB_ID | --list

The address is the head's dashboard / job API URL (default: RAY_API_SERVER_ADDRESS, then
RAY_ADDRESS). A head with token authentication wants RAY_AUTH_MODE=token here and the token in
RAY_AUTH_TOKEN or ~/.ray/auth_token; see infra/job_submission.py and docs/cluster.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipelines.cli.options import add_config_options, add_selection_options, load, selection
from pipelines.config_loader import PAPER_BASE, shipped_name
from pipelines.dag import Selection

log = logging.getLogger("llama2.submit")


def add_submit_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    submit = commands.add_parser(
        "submit", help="run a pipeline as a Ray job on a cluster; or show, follow, stop a submitted job",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("pipeline", nargs="?", help="pipeline to submit, e.g. pretrain")
    add_config_options(submit, with_pipeline=False)
    add_selection_options(submit)

    submit.add_argument("--address", metavar="URL",
                        help="the head's job API, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS)")
    submit.add_argument("--working-dir", type=Path, metavar="DIR",
                        help="directory uploaded as the job's working directory (default: this checkout)")
    submit.add_argument("--submission-id", metavar="ID", help="job id to use (default: llama2-PIPELINE-TIME-RANDOM)")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return without following the logs")
    submit.add_argument("--no-forward-secrets", dest="forward_secrets", action="store_false",
                        help="do not pass MLflow/S3 credentials from this environment to the job")

    manage = submit.add_mutually_exclusive_group()
    manage.add_argument("--status", metavar="JOB_ID", help="print a submitted job's status")
    manage.add_argument("--logs", metavar="JOB_ID", help="print a submitted job's logs so far")
    manage.add_argument("--follow", metavar="JOB_ID", help="stream a submitted job's logs until it ends")
    manage.add_argument("--stop", metavar="JOB_ID", help="stop a submitted job")
    manage.add_argument("--list", action="store_true", help="list the cluster's jobs")
    submit.set_defaults(handler=_cmd_submit)
    return submit


def _cmd_submit(args: argparse.Namespace) -> int:
    from infra.job_submission import SubmissionError

    managing = args.status or args.logs or args.follow or args.stop or args.list
    if bool(managing) == bool(args.pipeline):
        print("error: give a PIPELINE to submit, or one of --status/--logs/--follow/--stop JOB_ID/--list",
              file=sys.stderr)
        return 2
    try:
        return _manage(args) if managing else _submit(args)
    except SubmissionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _submit(args: argparse.Namespace) -> int:
    from infra import job_submission as jobs

    working_dir = (args.working_dir or jobs.project_dir()).resolve()
    config = _validated_config(args)
    _warn_about_local_state(config)
    run_args = _run_args(args, working_dir)
    client = jobs.connect(args.address)
    job_id = jobs.submit(
        client,
        pipeline=args.pipeline,
        entry=jobs.entrypoint(args.pipeline, run_args),
        env=jobs.runtime_env(working_dir, os.environ, forward_secrets=args.forward_secrets),
        submission_id=args.submission_id,
    )
    print(f"submitted job {job_id}")
    sys.stdout.flush()
    if args.no_wait:
        print(f"follow it with: llama2 submit --follow {job_id}")
        return 0
    return _follow(client, job_id)


def _manage(args: argparse.Namespace) -> int:
    from infra import job_submission as jobs

    client = jobs.connect(args.address)
    if args.list:
        for job in client.list_jobs():
            print(f"{job.submission_id or job.job_id}  {job.status}  {job.entrypoint}")
        return 0
    if args.status:
        job = jobs.state(client, args.status)
        print(f"{job.job_id}  {job.status}  {job.message}")
        return 0
    if args.logs:
        sys.stdout.write(jobs.logs(client, args.logs))
        return 0
    if args.stop:
        stopped = jobs.stop(client, args.stop)
        print(f"{args.stop}: {'stop requested' if stopped else 'was not running'}")
        return 0
    return _follow(client, args.follow)


def _follow(client, job_id: str) -> int:
    from infra import job_submission as jobs

    try:
        job = jobs.follow(client, job_id, sys.stdout)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running. `llama2 submit --stop {job_id}` stops it.", file=sys.stderr)
        return 130
    print(f"job {job_id} {job.status}" + (f": {job.message}" if job.message else ""))
    return 0 if jobs.succeeded(job) else 1


def _validated_config(args: argparse.Namespace):
    """Refuse a bad config here rather than minutes later on the cluster; and one that would put
    credentials into the job's command line or uploaded files."""
    from infra.job_submission import refuse_credentials

    _, config = load(args)
    refuse_credentials("runtime.tracking_uri", config.runtime.tracking_uri or "")
    refuse_credentials("runtime.store", config.runtime.store)
    return config


def _warn_about_local_state(config) -> None:
    runtime = config.runtime
    if not Path(runtime.store).expanduser().is_absolute() and "://" not in runtime.store:
        log.warning("runtime.store=%r is relative: on the cluster it lands in the job's temporary working "
                    "directory; set it to storage every node sees", runtime.store)
    if not (os.environ.get("MLFLOW_TRACKING_URI") or runtime.tracking_uri):
        log.warning("no MLFLOW_TRACKING_URI: the job records lineage in a SQLite file inside its temporary "
                    "working directory; point it at your tracking server")


def _run_args(args: argparse.Namespace, working_dir: Path) -> list[str]:
    """The `llama2 run` options, with --config made relative to the uploaded working directory."""
    from infra.job_submission import config_in_working_dir

    def as_uploaded(reference: str) -> str:
        """A shipped config's name or `paper` as given (the job's checkout has them), a file relative to the upload."""
        if reference == PAPER_BASE or shipped_name(reference, args.pipeline):
            return reference
        return config_in_working_dir(Path(reference), working_dir)

    run_args: list[str] = []
    if args.base_config:
        run_args += ["--base-config", as_uploaded(args.base_config)]
    if args.config:
        run_args += ["--config", as_uploaded(args.config)]
    for override in args.overrides:
        run_args += ["--set", override]
    chosen, stage = selection(args)
    if chosen is not Selection.ALL:
        run_args += [f"--{chosen.value}", stage]
    if args.force:
        run_args.append("--force")
    return run_args

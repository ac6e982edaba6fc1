"""Which process owns a RUNNING run, and ending the runs whose process is gone.

A run ends when the process that started it ends it: one killed with SIGKILL (or one that lost its
tracking server) leaves its runs RUNNING for ever. So every run of an invocation names its owner,
the host, the process id and the process's start time (a reused pid has another), and each
`llama2 run`, before it starts its own, ends as KILLED the RUNNING runs whose owner was on this
host and is gone, tagged `llama2.owner_gone` and saying so in their note. An owner on another host
cannot be checked from here, nor one in another PID namespace of this host (a container sharing
its host name): their runs are left as they are, for a `llama2 run` where the owner ran.
"""

from __future__ import annotations

import logging
import os
import socket

import psutil
from mlflow.entities import Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from infra.tracking import TAG_NOTE

log = logging.getLogger(__name__)

TAG_OWNER_HOST = "llama2.owner.host"
TAG_OWNER_PID = "llama2.owner.pid"
TAG_OWNER_STARTED = "llama2.owner.started"  # the process's start time, seconds since the epoch
TAG_OWNER_PID_SPACE = "llama2.owner.pid_namespace"  # Linux's id of the PID namespace the pid belongs to
TAG_OWNER_GONE = "llama2.owner_gone"
_SAME_START_S = 1.0  # psutil's start time is that of the kernel's clock ticks


def owner_tags() -> dict[str, str]:
    """This process as the owner of the runs it starts."""
    me = psutil.Process()
    return {TAG_OWNER_HOST: socket.gethostname(), TAG_OWNER_PID_SPACE: _pid_namespace(), TAG_OWNER_PID: str(me.pid),
            TAG_OWNER_STARTED: f"{me.create_time():.2f}"}


def end_runs_of_gone_owners(experiment_id: str) -> list[str]:
    """End as KILLED the experiment's RUNNING runs owned by a process of this host that is gone; their ids."""
    client = MlflowClient()
    host = socket.gethostname()
    query = (f"attributes.status = 'RUNNING' and tags.`{TAG_OWNER_HOST}` = '{host}' "
             f"and tags.`{TAG_OWNER_PID_SPACE}` = '{_pid_namespace()}'")
    ended = []
    for run in _all_runs(client, experiment_id, query):
        if _owner_alive(run):
            continue
        tags = run.data.tags
        outcome = (f"KILLED: its process (pid {tags[TAG_OWNER_PID]} on {host}) was gone without ending it "
                   "(killed, or it lost its tracking server); ended by a later run")
        client.log_batch(run.info.run_id, tags=[RunTag(TAG_OWNER_GONE, "true"),
                                                RunTag(TAG_NOTE, _with_outcome(tags.get(TAG_NOTE, ""), outcome))])
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        ended.append(run.info.run_id)
    if ended:
        log.warning("ended %d MLflow run(s) left RUNNING by a process of this host that is gone, as KILLED "
                    "(tag %s): %s", len(ended), TAG_OWNER_GONE, ", ".join(ended))
    return ended


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. pid:[4026531836]
    except OSError:
        return "none"  # not Linux: the host name alone


def _all_runs(client: MlflowClient, experiment_id: str, query: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _owner_alive(run: Run) -> bool:
    tags = run.data.tags
    try:
        owner = psutil.Process(int(tags[TAG_OWNER_PID]))
        return (owner.status() != psutil.STATUS_ZOMBIE
                and abs(owner.create_time() - float(tags[TAG_OWNER_STARTED])) < _SAME_START_S)
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, KeyError, ValueError):
        return True  # another user's process, or tags this code did not write: not ours to end


def _with_outcome(note: str, outcome: str) -> str:
    """The note's 'running' replaced by the outcome (it is there until a run ends), else the outcome added."""
    if note.endswith("running"):
        return note.removesuffix("running") + outcome
    return f"{note}; {outcome}" if note else outcome

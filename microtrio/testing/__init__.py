"""``microtrio.testing``: test your application on a real microtrio cluster.

* :func:`open_cluster` / :class:`TestCluster` / :class:`TestMember`: an N-member cluster in
  one ``trio.run`` (real mutual TLS on 127.0.0.1, port 0), with helpers to kill, stop,
  restart, pause, partition and heal members, wait for a leader and read every member's
  database. The pytest plugin ``microtrio.testing.plugin`` wraps it in fixtures.
* :class:`Faults` (with :class:`LinkRule`): drop, delay and partition rules on the Raft peer
  channel, handed to a member as ``DaemonArgs.faults``; links are keyed by Raft node ids
  (:func:`node_id_for` of a member name). :class:`ReplicationState` is what a daemon's
  ``replication`` property reports (leader, term, role, applied index).
* The verification toolkit: operation histories (:class:`History`, :class:`Recorder`),
  checkers (``check_register``, ``check_set``, ...), a linearizability checker
  (:func:`check_linearizability`), fault schedules (:func:`generate_schedule`,
  :func:`run_schedule`), link proxies and network namespaces, and HTML/PNG reports.

See ``docs/testing.md``.
"""

from __future__ import annotations

from .._replication import Faults as Faults
from .._replication import node_id_for as node_id_for
from .._replication._faults import LinkRule as LinkRule
from .._replication_state import ReplicationState as ReplicationState
from ._checkers import Anomaly as Anomaly
from ._checkers import CheckResult as CheckResult
from ._checkers import Validity as Validity
from ._checkers import check_append as check_append
from ._checkers import check_bank as check_bank
from ._checkers import check_register as check_register
from ._checkers import check_set as check_set
from ._checkers import verdict_json as verdict_json
from ._cluster import ArgsFactory as ArgsFactory
from ._cluster import TestCluster as TestCluster
from ._cluster import open_cluster as open_cluster
from ._history import CAS_MISMATCH as CAS_MISMATCH
from ._history import NEMESIS as NEMESIS
from ._history import Event as Event
from ._history import EventType as EventType
from ._history import FaultWindow as FaultWindow
from ._history import History as History
from ._history import Op as Op
from ._history import Outcome as Outcome
from ._history import Recorder as Recorder
from ._history import fault_windows as fault_windows
from ._history import pair_operations as pair_operations
from ._history import parse_jsonl as parse_jsonl
from ._history import read_jsonl as read_jsonl
from ._history import write_jsonl as write_jsonl
from ._linearizability import Add as Add
from ._linearizability import Append as Append
from ._linearizability import Cas as Cas
from ._linearizability import LinearizabilityResult as LinearizabilityResult
from ._linearizability import ListModel as ListModel
from ._linearizability import Model as Model
from ._linearizability import Operation as Operation
from ._linearizability import Read as Read
from ._linearizability import RegisterModel as RegisterModel
from ._linearizability import SetModel as SetModel
from ._linearizability import Verdict as Verdict
from ._linearizability import Write as Write
from ._linearizability import check_linearizability as check_linearizability
from ._member import TestMember as TestMember
from ._nemesis import ALL_FAULTS as ALL_FAULTS
from ._nemesis import FaultKind as FaultKind
from ._nemesis import NemesisExecutor as NemesisExecutor
from ._nemesis import Schedule as Schedule
from ._nemesis import Step as Step
from ._nemesis import asymmetric_links as asymmetric_links
from ._nemesis import bridge_links as bridge_links
from ._nemesis import generate_schedule as generate_schedule
from ._nemesis import partition_links as partition_links
from ._nemesis import run_schedule as run_schedule
from ._netns import NetnsNetwork as NetnsNetwork
from ._netns import can_connect as can_connect
from ._netns import netns_unavailable_reason as netns_unavailable_reason
from ._netns import open_netns_network as open_netns_network
from ._proxy import LinkProxy as LinkProxy
from ._proxy import LinkStatistics as LinkStatistics
from ._proxy import ProxyMesh as ProxyMesh
from ._proxy import open_proxy_mesh as open_proxy_mesh
from ._report import Canvas as Canvas
from ._report import Chart as Chart
from ._report import ReportPaths as ReportPaths
from ._report import encode_png as encode_png
from ._report import latency_summary as latency_summary
from ._report import render_chart as render_chart
from ._report import write_report as write_report

__all__ = [
    "ALL_FAULTS",
    "Add",
    "Anomaly",
    "Append",
    "ArgsFactory",
    "CAS_MISMATCH",
    "Canvas",
    "Cas",
    "Chart",
    "CheckResult",
    "Event",
    "EventType",
    "FaultKind",
    "FaultWindow",
    "Faults",
    "History",
    "LinearizabilityResult",
    "LinkProxy",
    "LinkRule",
    "LinkStatistics",
    "ListModel",
    "Model",
    "NEMESIS",
    "NemesisExecutor",
    "NetnsNetwork",
    "Op",
    "Operation",
    "Outcome",
    "ProxyMesh",
    "Read",
    "Recorder",
    "RegisterModel",
    "ReplicationState",
    "ReportPaths",
    "Schedule",
    "SetModel",
    "Step",
    "TestCluster",
    "TestMember",
    "Validity",
    "Verdict",
    "Write",
    "asymmetric_links",
    "bridge_links",
    "can_connect",
    "check_append",
    "check_bank",
    "check_linearizability",
    "check_register",
    "check_set",
    "encode_png",
    "fault_windows",
    "generate_schedule",
    "latency_summary",
    "netns_unavailable_reason",
    "node_id_for",
    "open_cluster",
    "open_netns_network",
    "open_proxy_mesh",
    "pair_operations",
    "parse_jsonl",
    "partition_links",
    "read_jsonl",
    "render_chart",
    "run_schedule",
    "verdict_json",
    "write_jsonl",
    "write_report",
]

"""Every PromQL query of the monitoring files, and the metric names each one selects.

Sources: docker/prometheus-rules.yml (alerts and recording rules), the Grafana dashboards
(docker/grafana/dashboards/*.json) and the prometheus-adapter rules that derive the autoscaling
metric (docker/k8s/monitoring/prometheus-adapter.yaml). Grafana's variables and the adapter's
template fields are replaced by values of the same kind first, then every query is parsed by a
real PromQL parser (promql-parser) and its vector selectors are collected, so names inside
functions, aggregations, ranges, subqueries and binary operations are all found, and label names
or function names never are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
RULES = DOCKER / "prometheus-rules.yml"
DASHBOARDS = DOCKER / "grafana" / "dashboards"
ADAPTER = DOCKER / "k8s" / "monitoring" / "prometheus-adapter.yaml"

# series that Prometheus writes itself (scrape health, alert state), not any target's /metrics
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
# Grafana's built-in interval variables, as a query would see them
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# prometheus-adapter's template fields (<<.Series>> is the series the rule's seriesQuery found)
ADAPTER_FIELDS = {"<<.LabelMatchers>>": 'namespace="fsrec",pod=~"fsrec-triton-.*"', "<<.GroupBy>>": "pod"}


@dataclass(frozen=True)
class Query:
    source: str  # where it is: "<file>: <alert, record, panel or rule name>"
    expr: str  # the PromQL, ready to parse


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    """Names the recording rules define (a query of them needs the rules, not a target)."""
    return {r["record"] for r in _rules() if "record" in r}


def rule_queries() -> list[Query]:
    return [Query(f"{RULES.name}: {r.get('alert') or r['record']}", str(r["expr"])) for r in _rules()]


def dashboard_panels(path: Path) -> list[dict]:
    """The panels of a dashboard, those inside collapsed rows included."""
    out = []
    for panel in json.loads(path.read_text())["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def grafana_expr(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r} (known: {sorted(GRAFANA_VARIABLES)})")
    return expr


def dashboard_queries() -> list[Query]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in dashboard_panels(path):
            for target in panel.get("targets", []):
                out.append(Query(f"{path.name}: {panel['title']} ({target['refId']})", grafana_expr(target["expr"])))
    return out


def adapter_rules() -> list[dict]:
    (cm,) = [d for d in yaml.safe_load_all(ADAPTER.read_text()) if d]
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


def adapter_expr(rule: dict) -> str:
    """The rule's metricsQuery as the adapter sends it for one HPA request."""
    (series,) = metric_names(rule["seriesQuery"])
    expr = rule["metricsQuery"].replace("<<.Series>>", series)
    for field, value in ADAPTER_FIELDS.items():
        expr = expr.replace(field, value)
    if "<<" in expr:
        raise ValueError(f"unknown adapter template field in {expr!r}")
    return expr


def adapter_queries() -> list[Query]:
    out = []
    for rule in adapter_rules():
        name = rule["name"]["as"]
        out += [Query(f"{ADAPTER.name}: {name} (seriesQuery)", rule["seriesQuery"]),
                Query(f"{ADAPTER.name}: {name} (metricsQuery)", adapter_expr(rule))]
    return out


def all_queries() -> list[Query]:
    return rule_queries() + dashboard_queries() + adapter_queries()


@dataclass(frozen=True)
class Selector:
    name: str  # the metric name
    matchers: tuple[tuple[str, str, str], ...]  # (label, "=" / "!=" / "=~" / "!~", value), __name__ left out

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a sample with ``labels`` (and this name) is selected (PromQL: regexes are anchored)."""
        for label, op, value in self.matchers:
            have = labels.get(label, "")
            ok = {"=": have == value, "!=": have != value}.get(op)
            if ok is None:
                ok = re.fullmatch(value, have) is not None
                ok = ok if op == "=~" else not ok
            if not ok:
                return False
        return True


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of ``expr`` (a ``{__name__="x"}`` selector counts as ``x``)."""
    import promql_parser as pp

    ops = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}
    out: list[Selector] = []

    def visit(node):
        if isinstance(node, pp.VectorSelector):
            matchers = [(m.name, ops[str(m.op)], m.value) for m in node.matchers.matchers]
            name = node.name
            if name is None:
                exact = [v for label, op, v in matchers if label == "__name__" and op == "="]
                if len(exact) != 1:
                    raise ValueError(f"{expr!r} selects series without one exact metric name: {node}")
                name = exact[0]
            out.append(Selector(name, tuple(m for m in matchers if m[0] != "__name__")))

    pp.walk(pp.parse(expr), visit)
    return out


def metric_names(expr: str) -> set[str]:
    """Names of the series ``expr`` selects."""
    return {s.name for s in selectors(expr)}


def scraped_names(queries: list[Query]) -> dict[str, list[str]]:
    """{metric name: sources using it} for the names a target must export: recording rules'
    names and the series Prometheus makes itself left out."""
    skip = recorded_names() | PROMETHEUS_SERIES
    out: dict[str, list[str]] = {}
    for q in queries:
        for name in metric_names(q.expr) - skip:
            out.setdefault(name, []).append(q.source)
    return out


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def exposition_samples(exposition: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample of a Prometheus text exposition, names as written
    (as Prometheus stores them: a counter without _total keeps its name)."""
    out = []
    for line in exposition.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out

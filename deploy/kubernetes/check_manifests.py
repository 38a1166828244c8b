#!/usr/bin/env python3
"""Consistency checks of rendered inferscope manifests and systemd units, beyond what the
Kubernetes schemas can say (scripts/check-deploy.sh runs it in its venv: needs PyYAML).

For each manifest file (one complete rendering of the chart):
  * every Service, PodDisruptionBudget and NetworkPolicy selects pods of the file, and every
    port it names exists on those pods;
  * every volumeMount has its volume, every probe's named port exists, every $(VAR) in args is
    an env var of the container;
  * files the programs are pointed at (--token-file, --tls-key, --spool-dir, ...) lie in a
    mounted volume, and a Secret volume that lists items has that file;
  * node-probe's in-cluster --export URLs name a Service of the file and one of its ports;
  * securityContext combinations the API server refuses (allowPrivilegeEscalation: false with
    privileged or CAP_SYS_ADMIN);
  * with --defaults: the default rendering's security posture (node-probe unprivileged with
    exactly its four capabilities, hostPID, read-only root file systems, aggregator non-root).
With --node-probe-bin / --aggregator-bin: every flag in the containers' args and the systemd
units' ExecStart= is one the built binary lists in --help (flags named with --pending are only
warned about: the binary does not have them yet).
"""
import argparse
import re
import subprocess
import sys
from urllib.parse import urlparse

import yaml

NODE_PROBE_CAPS = {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"}
# Options that name a file or directory the program reads or writes.
PATH_FLAGS = {
    "token-file",
    "api-token-file",
    "node-tokens-file",
    "tls-cert",
    "tls-key",
    "export-tls-ca",
    "otlp-ca-file",
    "spool-dir",
    "proc-root",
    "btf",
    "config",
}

errors = []
warnings = []


def error(where, msg):
    errors.append(f"{where}: {msg}")


def warn(where, msg):
    warnings.append(f"{where}: {msg}")


def help_flags(binary):
    """The long options `binary --help` lists."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)", out, re.M))


def flag_name(arg):
    m = re.match(r"--([a-z0-9][a-z0-9-]*)", arg)
    return m.group(1) if m else None


def check_flags(where, args, known, pending):
    if known is None:
        return
    for a in args:
        name = flag_name(a)
        if name is None or name in known:
            continue
        if name in pending:
            warn(where, f"--{name} is not in this build's --help yet (pending)")
        else:
            error(where, f"unknown flag --{name} (not in the binary's --help)")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_templates(docs):
    """(kind/name, namespace, pod template) of every workload."""
    for d in docs:
        if d.get("kind") in ("Deployment", "DaemonSet", "StatefulSet"):
            ns = d["metadata"].get("namespace", "default")
            yield f'{d["kind"]}/{d["metadata"]["name"]}', ns, d["spec"]["template"]


def container_ports(template):
    ports = set()
    for c in template["spec"].get("containers", []):
        for p in c.get("ports", []):
            ports.add(p["containerPort"])
            if "name" in p:
                ports.add(p["name"])
    return ports


def check_pods(docs, fname, bins, pending, external_secrets):
    secrets = {
        (d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs if d.get("kind") == "Secret"
    }
    for wname, ns, tpl in pod_templates(docs):
        spec = tpl["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("containers", []):
            where = f"{fname}: {wname} container {c['name']}"
            ports = {p.get("name") for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])
            }
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = (c.get(probe) or {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    error(where, f"{probe} port {port!r} is not a port of the container")
            mounts = {}
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    error(where, f"volumeMount {m['name']} has no volume")
                else:
                    mounts[m["mountPath"].rstrip("/")] = volumes[m["name"]]
            env = {e["name"] for e in c.get("env", [])}
            args = c.get("args", [])
            for a in args:
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                    if var not in env:
                        error(where, f"{a!r} uses $({var}), which is not an env var of the container")
                name = flag_name(a)
                if name in PATH_FLAGS and "=" in a:
                    check_path(where, a.split("=", 1)[1], mounts)
            binary = bins.get(c["name"])
            check_flags(where, args, binary, pending)
            sc = c.get("securityContext", {})
            adds = set(sc.get("capabilities", {}).get("add", []))
            if sc.get("allowPrivilegeEscalation") is False and (sc.get("privileged") or "SYS_ADMIN" in adds):
                error(where, "allowPrivilegeEscalation: false with privileged or SYS_ADMIN is refused by the API server")
        for v in volumes.values():
            sname = (v.get("secret") or {}).get("secretName")
            if sname and (ns, sname) not in secrets:
                external_secrets.add(f"{ns}/{sname}")
        for c in spec.get("containers", []):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and (ns, ref["name"]) not in secrets:
                    external_secrets.add(f"{ns}/{ref['name']}")


def check_path(where, path, mounts):
    """`path` lies in a mounted volume; in a Secret volume with items, it is one of them."""
    for mount_path, vol in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if path == mount_path or path.startswith(mount_path + "/"):
            items = (vol.get("secret") or {}).get("items")
            if items is not None and path != mount_path:
                rel = path[len(mount_path) + 1 :]
                if rel not in {i["path"] for i in items}:
                    error(where, f"{path}: Secret volume {vol['name']} has no item {rel!r}")
            return
    error(where, f"{path} is not inside any mounted volume")


def check_selectors(docs, fname):
    pods = list(pod_templates(docs))

    def matching(ns, selector):
        return [(n, t) for n, pns, t in pods if pns == ns and selects(selector, t["metadata"].get("labels", {}))]

    for d in docs:
        kind, meta = d.get("kind"), d["metadata"]
        ns = meta.get("namespace", "default")
        where = f"{fname}: {kind}/{meta['name']}"
        if kind == "Service":
            m = matching(ns, d["spec"].get("selector", {}))
            if not m:
                error(where, "its selector matches no pod template")
            for p in d["spec"].get("ports", []):
                tp = p.get("targetPort", p["port"])
                if m and not any(tp in container_ports(t) for _, t in m):
                    error(where, f"targetPort {tp!r} is not a port of the selected pods")
        elif kind == "PodDisruptionBudget":
            if not matching(ns, d["spec"]["selector"].get("matchLabels", {})):
                error(where, "its selector matches no pod template")
        elif kind == "NetworkPolicy":
            targets = matching(ns, d["spec"]["podSelector"].get("matchLabels", {}))
            if not targets:
                error(where, "its podSelector matches no pod template")
            for rule in d["spec"].get("ingress", []):
                for peer in rule.get("from", []):
                    sel = (peer.get("podSelector") or {}).get("matchLabels")
                    if sel and "namespaceSelector" not in peer and not matching(ns, sel):
                        error(where, f"ingress podSelector {sel} matches no pod template")
                for p in rule.get("ports", []):
                    if targets and not any(p["port"] in container_ports(t) for _, t in targets):
                        error(where, f"port {p['port']!r} is not a port of the selected pods")


def check_export(docs, fname):
    services = {
        (d["metadata"]["name"], d["metadata"].get("namespace", "default")): d
        for d in docs
        if d.get("kind") == "Service"
    }
    for wname, _, tpl in pod_templates(docs):
        for c in tpl["spec"]["containers"]:
            if c["name"] != "node-probe":
                continue
            for a in c.get("args", []):
                if not a.startswith("--export="):
                    continue
                url = urlparse(a.split("=", 1)[1])
                host = url.hostname or ""
                m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?", host)
                if not m:
                    continue
                svc = services.get((m.group(1), m.group(2)))
                where = f"{fname}: {wname}: {a}"
                if svc is None:
                    error(where, f"no Service {m.group(2)}/{m.group(1)} in this rendering")
                elif url.port not in {p["port"] for p in svc["spec"]["ports"]}:
                    error(where, f"Service {m.group(1)} has no port {url.port}")


def check_defaults(docs, fname):
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    ds = next((d for (k, _), d in by_kind.items() if k == "DaemonSet"), None)
    dep = next((d for (k, _), d in by_kind.items() if k == "Deployment"), None)
    if ds is None or dep is None:
        error(fname, "the default rendering has no node-probe DaemonSet or aggregator Deployment")
        return
    spec = ds["spec"]["template"]["spec"]
    c = spec["containers"][0]
    sc = c.get("securityContext", {})
    where = f"{fname}: node-probe"
    if not spec.get("hostPID"):
        error(where, "hostPID is not set")
    if sc.get("privileged"):
        error(where, "privileged by default")
    if set(sc.get("capabilities", {}).get("add", [])) != NODE_PROBE_CAPS:
        error(where, f"capabilities {sc.get('capabilities')} are not drop ALL + {sorted(NODE_PROBE_CAPS)}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        error(where, "capabilities are not dropped first (drop: [ALL])")
    if not sc.get("readOnlyRootFilesystem"):
        error(where, "root file system is writable")
    if "--proc-root=/host/proc" not in c.get("args", []):
        error(where, "--proc-root=/host/proc is missing")
    where = f"{fname}: aggregator"
    pod_sc = dep["spec"]["template"]["spec"].get("securityContext", {})
    csc = dep["spec"]["template"]["spec"]["containers"][0].get("securityContext", {})
    if not pod_sc.get("runAsNonRoot"):
        error(where, "may run as root")
    if not csc.get("readOnlyRootFilesystem") or csc.get("allowPrivilegeEscalation") is not False:
        error(where, "root file system writable or privilege escalation allowed")
    if dep["spec"].get("replicas") != 2:
        error(where, f"replicas {dep['spec'].get('replicas')} (the default is 2)")


def check_unit(path, bins, pending):
    """Flags of a unit's ExecStart= against the binary it runs."""
    for line in open(path, encoding="utf-8"):
        if not line.startswith("ExecStart="):
            continue
        words = line.split("=", 1)[1].split()
        prog = words[0].rsplit("/", 1)[-1]
        check_flags(f"{path}: ExecStart", words[1:], bins.get(prog), pending)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifests", nargs="*", help="rendered manifest files (multi-document YAML)")
    ap.add_argument("--defaults", action="append", default=[], help="a rendering with default values")
    ap.add_argument("--unit", action="append", default=[], help="a systemd unit file")
    ap.add_argument("--node-probe-bin")
    ap.add_argument("--aggregator-bin")
    ap.add_argument("--pending", action="append", default=[], help="a flag being added (warn only)")
    a = ap.parse_args()

    bins = {}
    if a.node_probe_bin:
        bins["node-probe"] = help_flags(a.node_probe_bin)
    if a.aggregator_bin:
        bins["aggregator"] = help_flags(a.aggregator_bin)
    pending = set(a.pending)

    for fname in a.defaults + a.manifests:
        with open(fname, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        external = set()
        check_pods(docs, fname, bins, pending, external)
        check_selectors(docs, fname)
        check_export(docs, fname)
        if fname in a.defaults:
            check_defaults(docs, fname)
        if external:
            print(f"  {fname}: expects existing Secrets: {', '.join(sorted(external))}")
    for u in a.unit:
        check_unit(u, bins, pending)

    for w in warnings:
        print(f"  warning: {w}")
    for e in errors:
        print(f"  ERROR: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

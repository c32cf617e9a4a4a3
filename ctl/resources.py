"""calicoctl's resource verbs against the datastore: apply, create, replace, delete, get, ipam show.

Every document is validated (``crds.load``), checked against the other documents of its file
(duplicates, overlapping pools) and against what is stored (pool overlap, immutable fields) before
anything is written; one bad document in a file means nothing is written. A pool that still has
addresses allocated is not deleted without ``--force``.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

import datastore
from crds import InvalidResource, IPPool, Resource, check_update, kind_class, merged, validate_set
from ctl import config, output
from ctl.documents import UsageError, read_documents, source_name
from datastore.base import AlreadyExists, Conflict, Datastore, DatastoreError, NotFound

__all__ = ["UsageError", "read_documents", "reexec_in_lab", "run", "write"]

_PAST = {"apply": "applied", "create": "created", "replace": "replaced", "delete": "deleted"}


def reexec_in_lab(lab: str, argv: list[str]) -> int:
    """Run this same command inside the lab's fabric namespace, where its etcd listens.

    The datastore goes in the environment (``DATASTORE_TYPE`` with ``ETCD_ENDPOINTS`` or
    ``KUBECONFIG``, which every datastore command reads), not argv: ``node`` and ``lab``
    subcommands take no datastore flags and would reject them.
    """
    from lab.lab import LabError, LabState, check_name

    try:
        check_name(lab)
    except LabError:
        raise UsageError(f"--lab: {lab!r} is not a lab name (1-6 lowercase letters/digits, "
                         "starting with a letter)") from None
    try:
        state = LabState.load(lab)
    except (LabError, OSError, ValueError) as exc:
        print(f"pycalicoctl: --lab: {exc}", file=sys.stderr)
        return 1
    env = {**os.environ, **state.datastore_env()}
    try:
        os.execvpe("ip", ["ip", "netns", "exec", f"{lab}-fabric", sys.executable, "-m", "ctl.main",
                          *_without_lab(argv)], env)
    except OSError as exc:
        print(f"pycalicoctl: --lab: cannot run 'ip netns exec': {exc.strerror or exc}", file=sys.stderr)
    return 1


def _without_lab(argv: list[str]) -> list[str]:
    """argv minus ``--lab NAME`` / ``--lab=NAME``."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--lab":
            skip = True
        elif not arg.startswith("--lab="):
            rest.append(arg)
    return rest


def check_write(ds: Datastore, items: Sequence[Resource]) -> None:
    """Every rule across resources, before anything is written (a file applies whole or not at
    all): the file against itself (a resource twice, overlapping pools), then the store as it would
    be after the write (crds.validate_set over crds.merged), and immutable fields of replaced ones."""
    try:
        validate_set(items)
    except InvalidResource as exc:
        raise UsageError(f"{exc} in the same file") from None
    kinds = {r.KIND for r in items}
    if kinds & {"BGPPeer", "BGPFilter"}:
        kinds |= {"BGPPeer", "BGPFilter"}  # peers name filters: check them together
    stored = [r for kind in sorted(kinds) for r in ds.list(kind).items]
    current = {r.key: r for r in stored}
    try:
        for new in items:
            if new.key in current:
                check_update(current[new.key], new)
        validate_set(merged(stored, items), whole_store=True)
    except InvalidResource as exc:
        raise UsageError(str(exc)) from None


def write(ds: Datastore, verb: str, items: Iterable[Resource]) -> int:
    items = list(items)
    check_write(ds, items)
    done = 0
    for r in items:
        try:
            if verb == "create":
                ds.create(r.with_revision(None))
            elif verb == "replace":
                current = ds.get(r.KIND, r.name, r.metadata.namespace)
                ds.update(r.with_revision(r.metadata.resource_version
                                          or current.metadata.resource_version))
            else:
                ds.apply(r)
        except (AlreadyExists, NotFound, Conflict) as exc:
            print(f"Failed to {verb} {r.KIND} {r.name}: {exc}", file=sys.stderr)
            continue
        done += 1
    kinds = sorted({r.KIND for r in items})
    print(f"Successfully {_PAST[verb]} {done} {'/'.join(repr(k) for k in kinds)} resource(s)")
    return 0 if done == len(items) else 1


def run(args) -> int:
    # A bad file is reported before the datastore is contacted: it needs none to be wrong.
    items = _file_items(args) if getattr(args, "filename", None) else None
    try:
        target = config.resolve(config.Flags(args.datastore_type, args.etcd_endpoints,
                                             args.kubeconfig), config=args.config)
        ds = datastore.connect(target.datastore_type, etcd_endpoints=target.etcd_endpoints,
                               kubeconfig=target.kubeconfig)
    except ValueError as exc:  # ConfigError included
        raise UsageError(str(exc)) from None
    try:
        if args.cmd in ("apply", "create", "replace"):
            return write(ds, args.cmd, items)
        if args.cmd == "delete":
            return delete(ds, args, items)
        if args.cmd == "get":
            return get(ds, args)
        if args.cmd == "ipam":
            return ipam_show(ds, args.show_blocks)
    except DatastoreError as exc:
        print(f"pycalicoctl: datastore error: {exc}", file=sys.stderr)
        return 1
    finally:
        ds.close()
    raise UsageError(f"unknown command {args.cmd}")


def _file_items(args) -> list[Resource]:
    """The file's resources; an empty file is an error (exit 2): applying nothing is almost always
    a wrong or truncated file, and a script must not take it for success."""
    items = read_documents(args.filename)
    if not items:
        raise UsageError(f"no resources in {source_name(args.filename)}; nothing {_PAST[args.cmd]}")
    return items


def delete(ds: Datastore, args, items: list[Resource] | None = None) -> int:
    if items is not None:
        targets = [(r.KIND, r.name, r.metadata.namespace) for r in items]
    elif args.kind and args.name:
        cls = _kind(args.kind)
        _require_namespace(cls, args.namespace, "delete")
        targets = [(cls.KIND, args.name, args.namespace)]
    else:
        raise UsageError("delete needs -f FILE or KIND NAME")
    if not getattr(args, "force", False):
        refusals = pools_in_use(ds, [name for kind, name, _ in targets if kind == "IPPool"])
        for line in refusals:
            print(f"pycalicoctl: {line}", file=sys.stderr)
        if refusals:
            return 1
    failed = 0
    for kind, name, ns in targets:
        try:
            ds.delete(kind, name, ns)
        except NotFound as exc:
            print(f"Failed to delete: {exc}", file=sys.stderr)
            failed += 1
    print(f"Successfully deleted {len(targets) - failed} resource(s)")
    return 1 if failed else 0


def pools_in_use(ds: Datastore, names: Sequence[str]) -> list[str]:
    """One refusal line per named pool that still has addresses allocated from it (stored CIDR).
    Deleting such a pool orphans its blocks: the addresses stay with pods but no pool covers them."""
    if not names:
        return []
    stored = {p.name: p for p in ds.list("IPPool").items}
    blocks = ds.list("IPAMBlock").items
    lines = []
    for name in names:
        pool = stored.get(name)
        used = output.allocated_from(pool, blocks) if pool is not None else 0
        if used:
            lines.append(f"IPPool {name}: {used} address(es) still allocated from {pool.spec.cidr}; "
                         "nothing deleted (release them first, or delete with --force)")
    return lines


def _require_namespace(cls: type[Resource], namespace: str | None, verb: str) -> None:
    if cls.NAMESPACED and not namespace:
        raise UsageError(f"-n/--namespace: {cls.KIND} is namespaced; {verb} by name needs "
                         "-n NAMESPACE")


def _kind(name: str) -> type[Resource]:
    try:
        return kind_class(name)
    except InvalidResource as exc:
        raise UsageError(str(exc)) from None


def get(ds: Datastore, args) -> int:
    cls = _kind(args.kind)
    if args.name:
        _require_namespace(cls, args.namespace, "get")
        try:
            items, revision = [ds.get(cls.KIND, args.name, args.namespace)], 0
        except NotFound as exc:
            print(f"Failed to get resources: {exc}", file=sys.stderr)
            return 1
    else:
        listing = ds.list(cls.KIND, args.namespace)
        items, revision = listing.items, listing.revision
    if args.output in ("yaml", "json"):
        print(output.documents(cls.KIND, items, revision, args.output, single=bool(args.name)))
    else:
        headers, rows = output.resource_rows(cls.KIND, items, wide=args.output == "wide",
                                             default_asn=_global_asn(ds))
        print(output.columns(headers, rows))
    return 0


def _global_asn(ds: Datastore) -> int:
    try:
        return ds.get("BGPConfiguration", "default").spec.as_number
    except NotFound:
        return output.DEFAULT_ASN


def ipam_show(ds: Datastore, show_blocks: bool) -> int:
    pools, blocks = ds.list("IPPool").items, ds.list("IPAMBlock").items
    headers, rows = output.ipam_rows(pools, blocks, show_blocks)
    print(output.boxed(headers, rows))
    orphans = output.blocks_in_no_pool(pools, blocks)
    if orphans:
        used = sum(output.in_use(b) for b in orphans)
        cidrs = ", ".join(b.spec.cidr for b in orphans)
        print(f"Warning: {used} address(es) allocated in {len(orphans)} IPAM block(s) inside no IP "
              f"pool ({cidrs}); was their pool deleted?", file=sys.stderr)
    return 0

"""A Kubernetes API server stand-in for tests and the lab: real HTTP, objects in real etcd.

Does I/O (HTTP server, etcd over its v3 JSON gateway). No kube-apiserver can be installed on our
machines, so this serves what pycalico and ``kubectl`` depend on, stored the way kube-apiserver stores
it (one JSON value per key under ``/registry/``; ``resourceVersion`` = etcd ``mod_revision``, so a
watch from a compacted revision gets a real 410): discovery, CustomResourceDefinitions and their
custom resources, core ``namespaces``, ``nodes``, ``pods``, ``secrets``; get, list (label and field
selectors, ``limit``/``continue``), watch (bookmarks, timeouts, 410 ``Expired``), create, replace
(409 on a stale resourceVersion), merge / JSON / (built-ins only) strategic merge patch, server-side
apply (approximated), dry runs, delete with preconditions, delete collection; ``Status`` error
bodies; Table answers for ``kubectl get``.

Start it: ``python -m lab.apiserver --etcd-endpoints http://127.0.0.1:2379 --listen 127.0.0.1:6443``
(plain HTTP, no authentication), or from Python ``with running_apiserver(etcd_url) as url: ...``
(``lab.apiserver.launch``).

Faithful where we depend on it, and checked with clients nobody here wrote (the real kubectl,
the official Python client) in ``tests/functional/test_apiserver*.py``: custom resources are pruned
and validated against their CRD's structural schema (``fieldValidation`` Strict / Warn / Ignore);
a create carrying a resourceVersion is refused with the real server's 500; bookmarks advance while
the watched type is quiet; Secret ``stringData`` is folded into ``data``; a deleted CRD takes its
objects along; kubectl's validation checks are satisfied by minimal OpenAPI v3 documents (PATCH
operations listing ``fieldValidation``) and an empty OpenAPI v2 document.

NOT faithful (do not depend on these):
- no authentication, authorization, admission webhooks, TLS or HTTP/2; answers are JSON; protobuf
  request bodies only for Secret and Namespace (what ``kubectl create secret|namespace`` sends);
- CRD schemas: no ``format``, CEL rules, ``allOf``/``anyOf``/``oneOf``, defaults; no conversion
  between CRD versions (every served version returns the stored object relabelled); built-in types
  are not validated beyond names, kind and apiVersion;
- strategic merge patch: core types merge lists by the Go types' merge keys (``lab.apiserver.
  strategic``: the fields Pod, Node, Namespace and Secret have); CRDs get a JSON merge patch
  without the ``$`` directives; no ``retainKeys`` patch strategies beyond the directive itself;
- server-side apply is "create, or merge the applied config": no managedFields, no field ownership,
  no conflicts between managers;
- finalizers: a DELETE of an object with ``metadata.finalizers`` sets ``deletionTimestamp`` and the
  object goes when an update removes the last one; otherwise a DELETE removes the key at once:
  no graceful pod deletion (kubelet's part), no garbage collection of owned objects, and a deleted
  namespace takes its objects along at once instead of going through Terminating;
- status subresources: pods, nodes, namespaces, CRDs, and custom resources whose CRD declares
  one (main writes keep the stored status, ``/status`` writes change only status); other
  metadata rules of the status strategies are not copied;
- no watch cache: every watch is its own etcd watch, so a watch from an old but uncompacted revision
  is served (the real server answers 410 once the revision leaves its watch-cache window);
- list ``resourceVersion``: ``resourceVersionMatch=Exact`` reads at that revision, every other list
  is a fresh read (no "too large resource version" wait); no ``remainingItemCount``; no
  ``sendInitialEvents``; no aggregated discovery (kubectl falls back to the legacy documents).
"""

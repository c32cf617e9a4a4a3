"""A Kubernetes API server stand-in for tests and the lab: real HTTP, objects in real etcd.

Does I/O (HTTP server, etcd over its v3 JSON gateway). No kube-apiserver can be installed on our
machines, so this serves what pycalico and ``kubectl`` depend on, stored the way kube-apiserver stores
it (one JSON value per key under ``/registry/``; ``resourceVersion`` = etcd ``mod_revision``, so a
watch from a compacted revision gets a real 410): discovery, CustomResourceDefinitions and their
custom resources, core ``namespaces``, ``nodes``, ``pods``, ``secrets``; get, list (label and field
selectors, ``limit``/``continue``), watch (bookmarks, timeouts, 410 ``Expired``), create, replace
(409 on a stale resourceVersion), merge / JSON / (built-ins only) strategic merge patch, delete with
preconditions, delete collection; ``Status`` error bodies; Table answers for ``kubectl get``.

Start it: ``python -m lab.apiserver --etcd-endpoints http://127.0.0.1:2379 --listen 127.0.0.1:6443``
(plain HTTP, no authentication), or from Python ``with running_apiserver(etcd_url) as url: ...``
(``lab.apiserver.launch``).

NOT faithful (do not depend on these):
- no authentication, authorization, admission, TLS, HTTP/2 or protobuf; JSON only;
- no schema validation, defaulting or pruning of custom resources (``fieldValidation`` is ignored),
  no conversion between CRD versions (every served version returns the stored object relabelled);
- strategic merge patch on built-ins is a JSON merge patch without the ``$`` directives: lists are
  replaced whole, never merged by key;
- server-side apply is "create, or merge the applied config": no managedFields, no field ownership,
  no conflicts between managers;
- no finalizers, ``deletionTimestamp``, graceful deletion, garbage collection or namespace
  termination: a DELETE removes the key at once (a deleted CRD does take its objects with it);
- status subresources: ``/status`` writes change only ``status`` but main-resource writes are not
  stopped from changing ``status``;
- no watch cache: every watch is its own etcd watch; bookmarks carry the last revision this watch
  delivered (kube-apiserver's advance with etcd progress notifications even when nothing changes);
- list ``resourceVersion`` semantics: ``resourceVersionMatch=Exact`` reads at that revision, every
  other list is a fresh read; no ``remainingItemCount``; no aggregated discovery; no OpenAPI.
"""

"""The fault matrix: real processes, real sockets, and the contract the README states.

    python -m benchmarks.fault_matrix [--quick] [--only GROUP[,GROUP]] [--seed 16]

Starts `trio-gateway serve` and `trio-gateway worker` processes (and a fake OpenAI upstream,
`tests/support/upstream_server.py`, in this process) on ephemeral 127.0.0.1 ports and tries about
sixty cases of faults against them, each checked through HTTP only (status, body, SSE frames,
`/metrics`, `/ready`, `/admin/workers`, exit codes, logs): client disconnects at every
stage, workers killed, stopped and restarted, upstream failure shapes, SIGTERM variants,
mutated bodies, header injection and framing, slowloris, a thousand simultaneous
disconnects, auth bypass attempts. A case passes only when every one of its checks holds;
the failed checks are printed. Every wait is bounded.

Prints a Markdown table (group, case, expected, observed, pass/fail), the totals per group,
writes benchmarks/results/fault_matrix.json and exits 1 when a case failed. `--quick`: 200
disconnects instead of 1000 and 100 mutated bodies instead of 300.

The modules: `harness` (the case, its checks and the runner; processes, requests, `/metrics`
readings), `raw_http` (the raw HTTP/1.1 client the cases send with), `report` (the table and
the JSON), and one module per group of cases, run in this order by `__main__`:
`client_disconnects`, `worker_failures`, `upstream_shapes`, `sigterm`, `mutated_bodies`,
`framing`, `slowloris`, `mass_disconnect`, `auth_bypass`.
"""

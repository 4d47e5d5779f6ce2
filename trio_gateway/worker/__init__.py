"""`trio-gateway worker`: an engine served to gateways over the request plane (`plane/`).

`server` owns the engine, drain and sessions and takes handshakes; `connection` serves one
gateway (reader, generations); `writer` is a connection's one sender; `credit` its flow
control; `sessions` the sessions open here; `probes` and `metrics` its HTTP side."""

"""Backends discovered from DNS: a `dns+` entry's name resolved again and again, each address
a member backend. `members` is the pure part (which members a set of addresses means, and
what changed between two sets), `resolver` asks the system, `watch` is the loop."""

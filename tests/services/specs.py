"""Processor specs shared by the caller and the services (declarations only)."""

from __future__ import annotations

from datagraph import Processor

# alpha implements these...
split = Processor("c_split", ["n"], ["even", "odd"])
nums = Processor("c_nums", ["n"], ["a", "b"])
left = Processor("c_left", ["n"], ["l"])
join = Processor("c_join", ["l", "r"], ["both"])
prod = Processor("c_prod", ["job"], ["items"])
slow = Processor("c_slow", ["job"], ["xs"])
ticker = Processor("c_ticker", ["n"], ["ticks"])
faulty = Processor("c_faulty", ["n"], ["fx"])

# ...beta these (no processor is implemented by both)...
pair = Processor("c_pair", ["a", "b"], ["sum"])
right = Processor("c_right", ["n"], ["r"])
cons = Processor("c_cons", ["items"], ["done"])
total = Processor("c_total", ["xs"], ["sum"], wait=True)
echo = Processor("c_echo", ["ticks"], ["echoed"])
drain = Processor("c_drain", ["fx"], ["drained"])

# ...and gamma, a service whose workers the tests start and kill one by one.
g_ticker = Processor("g_ticker", ["n"], ["g_ticks"])
g_source = Processor("g_source", ["n"], ["g"])
g_sink = Processor("g_sink", ["g"], ["g_out"])
g_count = Processor("g_count", ["g_job"], ["g_counted"])  # range(n), one value per period

ALPHA = (split, nums, left, join, prod, slow, ticker, faulty)
BETA = (pair, right, cons, total, echo, drain)
GAMMA = (g_ticker, g_source, g_sink, g_count)

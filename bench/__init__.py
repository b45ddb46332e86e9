"""`make bench`: the fleet measured on this machine, against this machine's ceiling for one service.

It starts everything it needs (a vhost and a database of its own, the ten services on free ports,
a bare FastAPI endpoint), runs k6, reads the services' own metrics, writes docs/bench/ (a markdown
report, a JSON file with every figure, a PNG chart) and puts the latest table into README.md.
"""

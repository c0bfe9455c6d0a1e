"""Quality and speed benchmarks: each module writes JSON and a short markdown table to reports/.

Run them through `rxrec bench <name>`; every result file names the machine and the command.
"""

"""``dualanodiff reproduce``: the paper's MVTec AD table by one command (plan, estimate, run, table)."""

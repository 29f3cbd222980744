"""`kubelab diagnose`: the broken-Service checklist, run against a lab (checklist.py), the
objects it reads (view.py), host firewall rules (firewall.py), and its rows in results
(rows.py)."""

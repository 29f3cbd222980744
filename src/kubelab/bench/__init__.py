"""Benchmarks: `kubelab bench scale|load|failover`. Results are rows like scenario results
(scenario = bench_*), so the same report, compare and history code reads them."""

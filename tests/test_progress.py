from recs_assets.progress import Progress


def test_progress_logs_every_interval_with_rate_and_eta():
    now = [0.0]
    lines = []
    p = Progress(lines.append, "BPR epochs", 100, every=10.0, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] = done * 0.5  # 2 epochs/s: 50 s in all
        p(done)
    # one line per 10 s, plus the final one
    assert len(lines) == 5, lines
    assert lines[0].startswith("BPR epochs: 20/100 (20%), 2.0/s") and "ETA 40s" in lines[0]
    assert lines[-1].startswith("BPR epochs: 100/100 (100%)") and "ETA 0s" in lines[-1]


def test_progress_quiet_for_short_steps_and_without_total():
    now = [0.0]
    lines = []
    p = Progress(lines.append, "fit", 3, clock=lambda: now[0])
    for d in (1, 2, 3):
        now[0] += 1.0
        p(d)
    assert lines == []
    q = Progress(lines.append, "rows", every=1.0, unit="rows", clock=lambda: now[0])
    now[0] += 2.0
    q(5000)
    assert lines == ["rows: 5,000 rows, 2,500.0 rows/s, elapsed 2s"]

"""``agentbox demo`` (``make demo``): a real analysis, cell by cell, in a fresh sandbox.

Synthetic sales data is generated *inside* the box (no network there), analysed
with pandas and scipy, plotted with matplotlib; each cell's outputs are shown as
they arrive, the result CSV is downloaded, and the executed notebook is written.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from sandbox._models import ExecutionResult
from sandbox._notebook import dumps, to_notebook
from sandbox._outputs import Event
from sandbox._sync import Session
from sandbox.cli.render import TerminalRenderer

CELLS = [
    # 1. data, made in the box
    """import numpy as np
import pandas as pd

rng = np.random.default_rng(7)
days = pd.date_range("2025-01-01", "2025-12-31", freq="D")
stores = ["Lisbon", "Porto", "Faro"]
base = {"Lisbon": 1200, "Porto": 950, "Faro": 700}
rows = []
for store in stores:
    season = 1 + 0.25 * np.sin(2 * np.pi * (days.dayofyear - 80) / 365)
    if store == "Faro":  # a beach town: summer peak
        season = 1 + 0.6 * np.sin(2 * np.pi * (days.dayofyear - 100) / 365)
    revenue = base[store] * season * rng.lognormal(0, 0.15, len(days))
    rows.append(pd.DataFrame({"date": days, "store": store, "revenue": revenue.round(2),
                              "orders": rng.poisson(revenue / 25)}))
sales = pd.concat(rows, ignore_index=True)
print(f"{len(sales):,} rows, {sales['store'].nunique()} stores")
sales.head()""",
    # 2. summary
    """sales.groupby("store")[["revenue", "orders"]].describe().T.round(1)""",
    # 3. monthly aggregation
    """monthly = (sales.assign(month=sales["date"].dt.to_period("M").astype(str))
           .pivot_table(index="month", columns="store", values="revenue", aggfunc="sum")
           .round(0))
monthly""",
    # 4. a figure
    """import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(8, 4))
monthly.plot(ax=ax, marker="o")
ax.set_title("Monthly revenue by store")
ax.set_ylabel("EUR")
ax.grid(alpha=0.3)
fig.tight_layout()""",
    # 5. a test
    """from scipy import stats

summer = sales[sales["date"].dt.month.isin([6, 7, 8])]
winter = sales[sales["date"].dt.month.isin([12, 1, 2])]
faro = stats.ttest_ind(summer.query("store == 'Faro'")["revenue"],
                       winter.query("store == 'Faro'")["revenue"], equal_var=False)
print(f"Faro summer vs winter: t = {faro.statistic:.1f}, p = {faro.pvalue:.2e}")
avg_order = (sales.groupby("store")["revenue"].sum() / sales.groupby("store")["orders"].sum())
avg_order.round(2).rename("avg order value")""",
    # 6. a file for the host
    """monthly.to_csv("monthly_revenue.csv")
import os
print("wrote monthly_revenue.csv,", os.path.getsize("monthly_revenue.csv"), "bytes")""",
]


def run_demo(out: str = "out/demo.ipynb", console: Console | None = None) -> int:
    console = console or Console()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    renderer = TerminalRenderer(console, image_dir=out_path.parent,
                                image_name=lambda n: f"{out_path.stem}-figure-{n}.png")
    executed: list[tuple[str, ExecutionResult | None]] = []
    t0 = time.monotonic()
    with console.status("starting a hardened sandbox (no network, read-only root, "
                        "no capabilities, non-root)..."):
        session = Session().start()
    with session:
        info = session.info
        console.print(f"[green]✓[/] sandbox {info.id} ready in {info.phases['total']:.2f}s "
                      f"(container {info.phases['container_start']:.2f}s, kernel "
                      f"{info.phases['kernel_ready']:.2f}s) image {info.image}")
        failed = 0

        def show(event: Event) -> None:
            if not isinstance(event, ExecutionResult):
                renderer.output(event)  # type: ignore[arg-type]

        for n, code in enumerate(CELLS, 1):
            console.print(Rule(f"In [{n}]", align="left", style="blue"))
            console.print(code, style="dim", highlight=False, markup=False)
            console.print(Rule(style="dim blue"))
            result = session.execute(code, timeout=120, on_output=show)
            executed.append((code, result))
            status = "[green]ok[/]" if result.ok else f"[red]{result.status}[/]"
            console.print(f"[dim]{status} in {result.duration_s * 1000:.0f} ms[/]")
            if not result.ok:
                failed += 1
        csv = session.download("monthly_revenue.csv")
        csv_path = out_path.parent / f"{out_path.stem}-monthly_revenue.csv"
        csv_path.write_bytes(csv)
        console.print(f"[green]✓[/] downloaded monthly_revenue.csv ({len(csv)} bytes) "
                      f"→ {csv_path}")
    nb = to_notebook(executed, metadata={"agentbox": {"session": info.id,
                                                      "image": info.image}})
    out_path.write_text(dumps(nb))
    console.print(f"[green]✓[/] executed notebook → {out_path}  "
                  f"({len(CELLS)} cells, {failed} failed, {time.monotonic() - t0:.1f}s total); "
                  "sandbox removed")
    return 1 if failed else 0

"""Figures: training curves (more tools join here). Matplotlib renders off-screen (Agg)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history, path):
    """``curves.png``: loss per epoch, and rank-1 / mAP at the epochs that were evaluated."""
    epochs = [row["epoch"] for row in history]
    evaluated = [row for row in history if row.get("mAP") is not None]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_axis.plot(epochs, [row["loss"] for row in history], marker="o", markersize=3)
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="Loss")
    if evaluated:
        metric_axis.plot([r["epoch"] for r in evaluated], [100 * r["rank1"] for r in evaluated], marker="o",
                         label="rank-1")
        metric_axis.plot([r["epoch"] for r in evaluated], [100 * r["mAP"] for r in evaluated], marker="s",
                         label="mAP")
        metric_axis.legend()
    split = evaluated[-1].get("eval_split", "") if evaluated else ""
    metric_axis.set(xlabel="epoch", ylabel="%", title=f"Retrieval ({split})" if split else "Retrieval",
                    ylim=(0, 100))
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

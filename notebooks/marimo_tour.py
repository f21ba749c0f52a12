# llm-widgets in marimo: `marimo edit notebooks/marimo_tour.py` (or `marimo run`).
# The widgets are anywidgets: wrap each in mo.ui.anywidget. The gradient monitor shows its
# controls live and its charts as recorded when its cell ran (marimo has no jupyter_bokeh).
import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import marimo as mo
    import torch

    import llm_widgets as lw

    return lw, mo, torch


@app.cell
def _(lw, mo):
    model = lw.load_model("smollm2-135m")
    trace = model.trace("The capital of France is", max_new_tokens=8)
    mo.ui.anywidget(lw.AttentionView(trace, layer=15, head=4))
    return (model,)


@app.cell
def _(lw, mo, model):
    prompt = "Write the word 'cat' or the word 'dog'. The answer is:"
    mo.ui.anywidget(lw.AttentionEditor(model, prompt, max_new_tokens=8, layer=15, head=4))
    return


@app.cell
def _(lw, torch):
    tiny = lw.load_model("tiny-gpt2")
    net = tiny.model.float().train().requires_grad_(True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    monitor = lw.GradientMonitor(net, optimizer=optimizer, warn=False)
    ids = tiny.tokenizer(
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse",
        return_tensors="pt",
    )["input_ids"]
    with monitor:
        for _ in range(30):
            loss = net(input_ids=ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            monitor.log(loss=loss)
    lw.GradientMonitorView(monitor)
    return


if __name__ == "__main__":
    app.run()

# %% [markdown]
# # kdbench from Python: a CIFAR-10 session
#
# Cells are marked `# %%` (VS Code, Jupyter with jupytext, or `python examples/python_api.py`).
# Needs CIFAR-10 under `$KDBENCH_DATA_ROOT/cifar10` (see the README's data set-up); a few minutes on a CPU.

# %%
import torch

import kdbench

# %% [markdown]
# ## 1. Run the quickstart recipe, scaled down, teacher included
# `set` reaches the recipe only; `teacher_set` reaches its teacher recipe.

# %%
outcome = kdbench.run(
    "recipes/quickstart.toml",
    set=["train.epochs=1", "eval.n_examples=200"],
    teacher_set=["train.epochs=1"],
    quiet=False,
)
print(outcome.out_dir, "reused" if outcome.reused else "trained")
print(outcome.result.metrics)

# %% [markdown]
# ## 2. Load the trained student and classify a few test images

# %%
model = kdbench.load_model(outcome.out_dir)
x = torch.rand(2, 3, 32, 32)  # any images in [0, 1]; the model normalises them itself
print(model(x).softmax(1))

# %% [markdown]
# ## 3. Evaluate it (or any torch model mapping [0, 1] images to logits)

# %%
report = kdbench.evaluate(model, "cifar10", attacks=["clean", "fgsm", "pgd20"], n=200)
print(f"clean {report.clean_acc:.3f}  pgd20 {report.robust['pgd20']:.3f}  flags {report.flags}")

# %% [markdown]
# ## 4. All finished runs as a table

# %%
records = kdbench.load_results()
for row in records:
    print(row["name"], row["method"], row["clean"], row["pgd20"], row["autoattack"])
try:
    frame = kdbench.load_results(as_frame=True)
    print(frame[["name", "method", "clean", "pgd20", "autoattack"]])
except kdbench.UserError as exc:  # pandas not installed
    print(exc)

"""Independent reference computations the tests compare the library against: brute-force loops and
closed forms written from the thesis' definitions, and phi computed from each encoder by hand (no hooks)."""

import numpy as np
import torch

from builders import SGD_STEP


def distance_to_boundary(phi, w_i, w_j, b_i, b_j):
    """Euclidean distance from ``phi`` to {x : s_i(x) = s_j(x)}, found as the closest point of the hyperplane
    by solving the KKT system of min ||x - phi||² s.t. a·x = c (no closed-form margin formula involved)."""
    a, c = w_i - w_j, b_j - b_i
    d = len(phi)
    kkt = np.zeros((d + 1, d + 1))
    kkt[:d, :d] = 2 * np.eye(d)
    kkt[:d, d] = a
    kkt[d, :d] = a
    x = np.linalg.solve(kkt, np.concatenate([2 * phi, [c]]))[:d]
    return np.linalg.norm(x - phi)


def brute_force_mms(logits, weight):
    """Each row's minimal margin score from the thesis' definition, ``(s[i1] - s[i2]) / ||W[i1] - W[i2]||`` with
    ``i1, i2`` the row's two highest scores (found by sorting the row), in float64, one row at a time."""
    logits, weight = (np.asarray(t, dtype=np.float64) for t in (logits, weight))
    scores = []
    for row in logits:
        first, second = sorted(range(len(row)), key=lambda j: row[j], reverse=True)[:2]
        scores.append((row[first] - row[second]) / np.linalg.norm(weight[first] - weight[second]))
    return np.array(scores)


def brute_force_model_mms(model, batch):
    """The minimal margin score of each row of ``batch`` under ``model``: :func:`brute_force_mms` of the logits
    computed from the features found by hand (:func:`independent_features`)."""
    linear = classifier_linear(model)
    with torch.no_grad():
        phi = independent_features(model, batch)
    weight, bias = linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()
    return brute_force_mms(phi.double().numpy() @ weight.T + bias, weight)


def brute_force_lowest_mms(model, batch, num_keep):
    """Indices of the ``num_keep`` rows of ``batch`` with the smallest minimal margin score under ``model`` (what
    MMS selection must keep)."""
    return np.argsort(brute_force_model_mms(model, batch), kind="stable")[:num_keep]


def brute_force_cross_entropy(logits, labels):
    """Each row's cross-entropy ``log sum_j exp(s_j) - s[y]``, in float64, one row at a time (shifted by the row's
    maximum, which cancels)."""
    logits = np.asarray(logits, dtype=np.float64)
    losses = []
    for row, y in zip(logits, labels):
        top = row.max()
        losses.append(float(np.log(np.exp(row - top).sum()) + top - row[int(y)]))
    return np.array(losses)


def brute_force_selection_priority(strategy, logits, weight, labels):
    """What selection strategy ``strategy`` keeps the lowest of, in float64 row by row: the margin (``mms``), minus
    the cross-entropy (``loss``), minus the softmax's entropy (``entropy``; ``p·log p`` from the log-softmax, so a
    probability that underflows to 0 adds 0)."""
    logits, weight = (np.asarray(t, dtype=np.float64) for t in (logits, weight))
    if strategy == "mms":
        return brute_force_mms(logits, weight)
    if strategy == "loss":
        return -brute_force_cross_entropy(logits, labels)
    out = []
    for row in logits:
        log_p = row - row.max() - np.log(np.exp(row - row.max()).sum())
        out.append(float((np.exp(log_p) * log_p).sum()))
    return np.array(out)


def brute_force_penalty(features, logits, labels, weight):
    features, logits, weight = (np.asarray(t, dtype=np.float64) for t in (features, logits, weight))
    phi_max_sq = max(float(np.dot(f, f)) for f in features)
    total = 0.0
    for n, y in enumerate(labels):
        best, competitor = -np.inf, None
        for j in range(logits.shape[1]):  # first maximum wins, as documented
            if j != y and logits[n, j] > best:
                best, competitor = logits[n, j], j
        gap = weight[y] - weight[competitor]
        total += float(np.dot(gap, gap)) * phi_max_sq
    return total / len(labels)


def autograd_mmr_loss(phi, weight, bias, labels, alpha):
    """``CE + alpha·R`` written out row by row, differentiable in ``phi``, ``weight`` and ``bias``: the reference
    whose gradient a trainer's step must follow (the competitor is the first highest wrong score)."""
    logits = phi @ weight.T + bias
    cross_entropy = torch.stack([torch.logsumexp(row, 0) - row[y] for row, y in zip(logits, labels.tolist())]).mean()
    phi_max_sq = torch.stack([f.dot(f) for f in phi]).max()
    gaps = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        competitor = max((j for j in range(len(row)) if j != y), key=lambda j: row[j])
        gaps.append((weight[y] - weight[competitor]).pow(2).sum())
    return cross_entropy + alpha * torch.stack(gaps).mean() * phi_max_sq


def sgd_step_of(model, loss):
    """``-lr·grad`` of ``loss`` for each trainable parameter of ``model`` that it reaches (SGD_STEP's lr)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
    return {n: -SGD_STEP["learning_rate"] * g for (n, _), g in zip(named, grads) if g is not None}


def assert_moved_by(trained, initial, steps):
    """``trained`` differs from ``initial`` by ``steps`` (name -> change) and in no other parameter."""
    before = dict(initial.named_parameters())
    moved = {n: p.detach() - before[n].detach() for n, p in trained.named_parameters()}
    assert set(steps) == {n for n, change in moved.items() if change.abs().max() > 0}
    for name, step in steps.items():  # atol per tensor: sums in another order differ by rounding of its largest terms
        torch.testing.assert_close(moved[name], step, rtol=1e-3, atol=1e-7 + 1e-4 * step.abs().max().item(), msg=name)


def assert_penalty_moves(steps, steps_without_penalty, names):
    """R's share of the step of each parameter in ``names`` is far above the tolerance of :func:`assert_moved_by`,
    so a step that left R out (or cut its gradient path) fails there."""
    for name in names:
        share = (steps[name] - steps_without_penalty[name]).abs().max()
        assert share > 100 * (1e-3 * steps[name].abs().max() + 1e-7), name


def independent_features(model, batch):
    """phi of each architecture's last linear layer, computed from the encoder by hand (no hooks)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    name = type(model).__name__
    if name.startswith("Bert"):
        return model.bert(input_ids=ids, attention_mask=mask).pooler_output
    if name.startswith("Roberta"):
        cls = model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return torch.tanh(model.classifier.dense(cls))
    if name.startswith("DistilBert"):
        cls = model.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return torch.relu(model.pre_classifier(cls))
    raise NotImplementedError(name)


def classifier_linear(model):
    return model.classifier.out_proj if type(model).__name__.startswith("Roberta") else model.classifier


def expected_loss(model, batch, alpha):
    """Cross-entropy + alpha·R for one batch, from independently computed features and a brute-force R."""
    linear = classifier_linear(model)
    with torch.no_grad():
        phi = independent_features(model, batch)
        logits = (phi @ linear.weight.T + linear.bias).double().numpy()
    labels = batch["labels"].numpy()
    ce = float(np.mean(brute_force_cross_entropy(logits, labels)))
    penalty = brute_force_penalty(phi.numpy(), logits, labels.tolist(), linear.weight.detach().numpy())
    return ce + alpha * penalty, penalty

"""The transition classifier: it tells clearly fake transitions from real ones."""

import torch

from umpo_dist.models.classifier import TransitionClassifier

torch.set_num_threads(1)

OBS, ACT = 3, 2
DYNAMICS = torch.tensor([[0.5, -0.2, 0.1], [0.0, 0.3, -0.4]])  # Δs = 0.2 · a @ DYNAMICS


def transitions(n: int, generator: torch.Generator, drift: float = 0.0):
    """Real transitions of a linear system; `drift` adds what a wrong model would: a push of every state."""
    obs = torch.randn(n, OBS, generator=generator)
    action = torch.rand(n, ACT, generator=generator) * 2 - 1
    return obs, action, obs + 0.2 * action @ DYNAMICS + drift


def test_the_classifier_separates_fake_transitions_from_real_ones_on_fresh_data():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    classifier = TransitionClassifier(OBS, ACT, hidden_layers=2, hidden_size=32)
    opt = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    losses = []
    for _ in range(300):
        loss, _ = classifier.loss(transitions(128, g), transitions(128, g, drift=0.1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[:10]) / 10 > 0.6 and sum(losses[-10:]) / 10 < 0.1  # from chance (ln 2 ≈ 0.69) to sure

    with torch.no_grad():
        real, fake = transitions(1000, g), transitions(1000, g, drift=0.1)
        _, accuracy = classifier.loss(real, fake)
        assert float(accuracy) > 0.97
        # The logit is log(C / (1 − C)): positive on real transitions, negative on fake ones.
        assert float(classifier(*real).median()) > 2 and float(classifier(*fake).median()) < -2


def test_input_statistics_scale_what_the_network_sees():
    classifier = TransitionClassifier(OBS, ACT, hidden_layers=1, hidden_size=8)
    g = torch.Generator().manual_seed(1)
    obs, action, next_obs = transitions(5, g)
    before = classifier(obs, action, next_obs)
    mean, std = torch.full((2 * OBS + ACT,), 3.0), torch.full((2 * OBS + ACT,), 2.0)
    classifier.set_obs_stats(mean, std)
    # (s, a, Δs) shifted and stretched by the statistics gives the same logits as before.
    assert torch.allclose(classifier(obs * 2 + 3, action * 2 + 3, (next_obs - obs) * 2 + 3 + obs * 2 + 3), before,
                          atol=1e-5)
    state = classifier.state_dict()
    assert torch.equal(state["obs_mean"], mean) and torch.equal(state["obs_std"], std)  # saved with the weights

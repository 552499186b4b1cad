"""PPO on the vector environment with every tensor on the environment's device: CleanRL's ``ppo_atari.py``, read
top to bottom, without numpy or per-environment Python.

The environment is ``gym.make_vec(ENV_ID, num_envs=N, device=D)`` (default: image-only search for a circle on
Shapes, ``ViewTransform-Shapes-SearchCircle-v0``), wrapped in :class:`view_env.wrappers.RecordEpisodeStatistics`;
observations are ``uint8 [N, 3, S, S]`` views, actions the discrete moves. The agent is CleanRL's Atari network
scaled to the view (three convolutions, a 512-unit layer, actor and critic heads). Each iteration collects
``num_steps`` steps of every environment into tensors on the device, computes GAE advantages, and runs
``update_epochs`` epochs of clipped-PPO minibatch updates. The run prints the steps per second of the whole loop and
the success rate of the episodes that ended.

    python benchmarks/ppo.py --env-id ViewTransform-Shapes-SearchCircle-Easy-v0  # 50k steps, about 2 minutes
    python benchmarks/ppo.py --device cuda --num-envs 1024 --total-timesteps 1000000
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents import cli
from agents.cli import check, option
from view_env.wrappers import RecordEpisodeStatistics


@dataclass
class PPOArgs:
    """Arguments of ``benchmarks/ppo.py`` (CleanRL's names and defaults where they apply)."""

    env_id: str = option("ViewTransform-Shapes-SearchCircle-v0", "a registered view_env id with discrete actions")
    total_timesteps: int = option(50_000, "environment steps in all (every environment's steps added up)")
    num_envs: int = option(16, "environments stepped as one batch")
    num_steps: int = option(128, "steps per environment per rollout")
    obs_size: int = option(64, "view side in pixels")
    device: str = option("cpu", "where the environment, the network and every tensor of the loop live")
    learning_rate: float = option(2.5e-4, "Adam learning rate (annealed linearly to 0)")
    gamma: float = option(0.99, "discount")
    gae_lambda: float = option(0.95, "GAE lambda")
    num_minibatches: int = option(4, "minibatches per epoch")
    update_epochs: int = option(4, "epochs per rollout")
    clip_coef: float = option(0.1, "PPO clipping of the probability ratio (and of the value)")
    ent_coef: float = option(0.01, "entropy bonus")
    vf_coef: float = option(0.5, "value loss weight")
    max_grad_norm: float = option(0.5, "gradient clipping")
    seed: int = option(1, "seed of the environments and the network")

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        check(self.num_envs * self.num_steps % self.num_minibatches == 0, "num_minibatches", self.num_minibatches,
              f"a divisor of num_envs x num_steps ({self.num_envs * self.num_steps})")
        check(self.learning_rate > 0, "learning_rate", self.learning_rate, "a number > 0")
        check(0 <= self.gamma <= 1, "gamma", self.gamma, "a discount in [0, 1]")
        check(0 <= self.gae_lambda <= 1, "gae_lambda", self.gae_lambda, "a number in [0, 1]")


def layer_init(layer: nn.Module, std: float = 2 ** 0.5, bias: float = 0.0) -> nn.Module:
    """Orthogonal weights and a constant bias, as CleanRL initialises its layers."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """CleanRL's Atari network for ``uint8 [B, 3, S, S]`` views: a shared convolutional trunk, then the actor's
    logits ``[B, A]`` and the critic's value ``[B]``."""

    def __init__(self, obs_size: int, num_actions: int) -> None:
        super().__init__()
        trunk = nn.Sequential(
            layer_init(nn.Conv2d(3, 32, 8, stride=4)), nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            width = trunk(torch.zeros(1, 3, obs_size, obs_size)).shape[1]
        self.network = nn.Sequential(trunk, layer_init(nn.Linear(width, 512)), nn.ReLU())
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1.0)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.network(obs.float() / 255.0)).squeeze(-1)

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled (or given) actions ``[B]``, their log-probabilities, the policy entropy and the value."""
        hidden = self.network(obs.float() / 255.0)
        distribution = torch.distributions.Categorical(logits=self.actor(hidden))
        if action is None:
            action = distribution.sample()
        return action, distribution.log_prob(action), distribution.entropy(), self.critic(hidden).squeeze(-1)


def advantages(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
               next_done: torch.Tensor, gamma: float, gae_lambda: float) -> torch.Tensor:
    """GAE over a rollout: ``[T, N]`` rewards, values and dones (``dones[t]``: the observation of step ``t`` began a
    new episode), the value and done of the observation after the last step ``[N]``; returns ``[T, N]``."""
    out = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        alive = 1.0 - (next_done if t == rewards.shape[0] - 1 else dones[t + 1])
        delta = rewards[t] + gamma * following * alive - values[t]
        last = delta + gamma * gae_lambda * alive * last
        out[t] = last
    return out


def train(args: PPOArgs, callback: Callable[[int, Agent], None] | None = None, **env_kwargs: Any) -> dict[str, Any]:
    """Run PPO; returns the steps per second of the whole loop, the episodes' success rate over the last quarter
    of the run, and the per-iteration losses. ``env_kwargs`` go to ``gym.make_vec``.

    Args:
        callback: Called before the first iteration (with 0) and after every iteration with the environment steps
            so far and the agent (e.g. to evaluate it); its time is left out of ``seconds`` and
            ``steps_per_second``.
    """
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    envs = RecordEpisodeStatistics(gym.make_vec(args.env_id, num_envs=args.num_envs, device=device,
                                                obs_size=args.obs_size, **env_kwargs))
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise ValueError(f"--env-id {args.env_id}: PPO here needs discrete actions, got {envs.single_action_space}")
    agent = Agent(args.obs_size, int(envs.single_action_space.n)).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    n, t_max = args.num_envs, args.num_steps
    batch_size = n * t_max
    iterations = max(1, args.total_timesteps // batch_size)
    obs = torch.zeros((t_max, n, 3, args.obs_size, args.obs_size), dtype=torch.uint8, device=device)
    actions = torch.zeros((t_max, n), dtype=torch.int64, device=device)
    logprobs, rewards, dones, values = (torch.zeros((t_max, n), device=device) for _ in range(4))
    next_obs, _ = envs.reset(seed=args.seed)
    next_done = torch.zeros(n, device=device)
    successes: list[float] = []
    history: list[dict[str, float]] = []
    began = time.perf_counter()
    outside = 0.0  # seconds spent in the callback
    if callback is not None:
        callback(0, agent)
        outside = time.perf_counter() - began
    for iteration in range(iterations):
        for group in optimizer.param_groups:  # linear annealing of the learning rate
            group["lr"] = args.learning_rate * (1.0 - iteration / iterations)
        for step in range(t_max):  # the rollout
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            actions[step], logprobs[step], values[step] = action, logprob, value
            next_obs, reward, terminated, truncated, info = envs.step(action)
            rewards[step] = reward.to(device)
            next_done = (terminated | truncated).float().to(device)
            if "episode" in info:
                ended = info["_episode"]
                successes.extend((info["episode"]["r"][ended] > 0).float().tolist())
        with torch.no_grad():
            advantage = advantages(rewards, values, dones, agent.get_value(next_obs), next_done, args.gamma,
                                   args.gae_lambda)
        returns = advantage + values
        history.append(update(agent, optimizer, args, obs.flatten(0, 1), actions.flatten(), logprobs.flatten(),
                              advantage.flatten(), returns.flatten(), values.flatten()))
        if callback is not None:
            called = time.perf_counter()
            callback((iteration + 1) * batch_size, agent)
            outside += time.perf_counter() - called
    seconds = time.perf_counter() - began - outside
    envs.close()
    tail = successes[-max(1, len(successes) // 4):] if successes else []
    return {"steps": iterations * batch_size, "seconds": seconds, "steps_per_second": iterations * batch_size / seconds,
            "episodes": len(successes), "success_rate": float(np.mean(tail)) if tail else float("nan"),
            "history": history, "agent": agent}


def update(agent: Agent, optimizer: torch.optim.Optimizer, args: PPOArgs, obs: torch.Tensor, actions: torch.Tensor,
           logprobs: torch.Tensor, advantage: torch.Tensor, returns: torch.Tensor, values: torch.Tensor
           ) -> dict[str, float]:
    """``update_epochs`` epochs of clipped-PPO minibatch steps over one rollout (flattened to ``[T * N, ...]``)."""
    batch_size = len(actions)
    minibatch = batch_size // args.num_minibatches
    for _ in range(args.update_epochs):
        order = torch.randperm(batch_size, device=obs.device)
        for start in range(0, batch_size, minibatch):
            index = order[start : start + minibatch]
            _, new_logprob, entropy, new_value = agent.get_action_and_value(obs[index], actions[index])
            ratio = (new_logprob - logprobs[index]).exp()
            adv = advantage[index]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
            clipped = values[index] + (new_value - values[index]).clamp(-args.clip_coef, args.clip_coef)
            value_loss = 0.5 * torch.max((new_value - returns[index]) ** 2, (clipped - returns[index]) ** 2).mean()
            loss = policy_loss - args.ent_coef * entropy.mean() + args.vf_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
    return {"policy_loss": float(policy_loss.detach()), "value_loss": float(value_loss.detach()),
            "entropy": float(entropy.detach().mean())}


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = cli.parse(PPOArgs, argv, description=__doc__)
    result = train(args)
    print(f"{args.env_id}: {result['steps']:,} steps in {result['seconds']:.0f} s "
          f"({result['steps_per_second']:,.0f} steps/s, the whole loop on {args.device}); {result['episodes']} "
          f"episodes, success rate {result['success_rate']:.3f} over the last quarter of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())

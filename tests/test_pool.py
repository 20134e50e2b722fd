"""--deployments: pooled quota across simulators, failover, set-aside deployments, resume across pool changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator, serve_in_thread
from asyncbatch.simulator.charge import Charging

from .helpers import batch_line, read_jsonl


def _lines(path: Path, n: int, start: int = 0) -> Path:
    rows = [batch_line(f"r{i}", f"request {i}: " + "x" * 1000, max_tokens=50) for i in range(start, start + n)]
    with path.open("a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


@contextmanager
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **servers: SimConfig) -> Iterator[dict[str, Simulator]]:
    """One simulator per entry, a deployments file naming them, and each key in its own variable."""
    with ExitStack() as stack:
        sims, entries = {}, []
        for name, config in servers.items():
            url, sim = stack.enter_context(serve_in_thread(config))
            monkeypatch.setenv(f"KEY_{name.upper()}", config.api_key)
            sims[name] = sim
            tpm = f"tpm = {config.tpm}\n" if config.tpm else ""
            rpm = f"rpm = {config.rpm}\n" if config.rpm else ""
            entries.append(
                f'[[deployments]]\nname = "{name}"\nendpoint = "{url}"\ndeployment = "dep-{name}"\n'
                f'api_key_env = "KEY_{name.upper()}"\n{tpm}{rpm}'
            )
        (tmp_path / "pool.toml").write_text("\n".join(entries))
        yield sims


def _served(sims: dict[str, Simulator]) -> dict[str, int]:
    return {name: sim.statuses["200"] for name, sim in sims.items()}


def _exactly_once(tmp_path: Path, n: int) -> list[dict]:
    results = read_jsonl(tmp_path / "in.results.jsonl")
    assert sorted(r["line"] for r in results) == list(range(1, n + 1))
    assert not read_jsonl(tmp_path / "in.results.errors.jsonl")
    return results


def test_unequal_quotas_share_the_requests_in_proportion_and_results_name_their_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lines(tmp_path / "in.jsonl", 600)
    big = SimConfig(api_key="k-big", tpm=900_000, rpm=10_800, latency=0.02)
    small = SimConfig(api_key="k-small", tpm=300_000, rpm=3_600, latency=0.02)
    with pool(tmp_path, monkeypatch, big=big, small=small) as sims:
        code = main(["in.jsonl", "--deployments", "pool.toml", "-c", "50", "-q"])
    assert code == 0
    results = _exactly_once(tmp_path, 600)
    shares = Counter(r["deployment"] for r in results)
    assert shares["big"] + shares["small"] == 600
    assert abs(shares["big"] / 600 - 0.75) <= 0.10  # within 10 points of its share of the quota
    assert _served(sims) == {"big": shares["big"], "small": shares["small"]}  # each answer billed once
    assert sum(sim.statuses["429"] for sim in sims.values()) <= 12  # at most 2% answered 429


def test_a_deployment_that_goes_down_mid_run_fails_over_and_every_input_lands_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lines(tmp_path / "in.jsonl", 400)
    steady = SimConfig(api_key="k-a", latency=0.01)
    dying = SimConfig(api_key="k-b", latency=0.01, outage_after=60, outage_seconds=3600)
    with pool(tmp_path, monkeypatch, a=steady, b=dying) as sims:
        code = main(["in.jsonl", "--deployments", "pool.toml", "-c", "20", "--backoff", "0.05", "-q"])
    assert code == 0
    results = _exactly_once(tmp_path, 400)
    shares = Counter(r["deployment"] for r in results)
    assert shares["b"] <= 60 and shares["a"] >= 340
    assert sum(sim.billed_twice() for sim in sims.values()) == 0


def test_a_deployment_with_a_wrong_key_is_set_aside_with_a_message_and_the_other_does_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _lines(tmp_path / "in.jsonl", 100)
    with pool(tmp_path, monkeypatch, good=SimConfig(api_key="k-good"), bad=SimConfig(api_key="k-bad")) as sims:
        monkeypatch.setenv("KEY_BAD", "wrong-key-value")
        code = main(["in.jsonl", "--deployments", "pool.toml", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "deployment bad set aside: authentication failed" in err and "1 still working" in err
    assert "wrong-key-value" not in err
    assert {r["deployment"] for r in _exactly_once(tmp_path, 100)} == {"good"}
    assert sims["good"].statuses["200"] == 100


def test_when_every_deployment_is_refused_the_run_stops_with_exit_2_and_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _lines(tmp_path / "in.jsonl", 50)
    with pool(tmp_path, monkeypatch, a=SimConfig(api_key="k-a"), b=SimConfig(api_key="k-b")):
        monkeypatch.setenv("KEY_A", "wrong-a")
        monkeypatch.setenv("KEY_B", "wrong-b")
        code = main(["in.jsonl", "--deployments", "pool.toml", "-q"])
    assert code == 2
    assert "every deployment was set aside" in capsys.readouterr().err
    assert not read_jsonl(tmp_path / "in.results.jsonl") and not read_jsonl(tmp_path / "in.results.errors.jsonl")


def test_deployments_can_be_added_and_removed_between_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _lines(tmp_path / "in.jsonl", 60)
    with pool(tmp_path, monkeypatch, a=SimConfig(api_key="k-a"), b=SimConfig(api_key="k-b")) as sims:
        assert main(["in.jsonl", "--deployments", "pool.toml", "-q"]) == 0
        _lines(tmp_path / "in.jsonl", 40, start=60)
        (tmp_path / "one.toml").write_text((tmp_path / "pool.toml").read_text().split("\n[[deployments]]")[0])
        assert main(["in.jsonl", "--deployments", "one.toml", "-q"]) == 0  # b removed
        served = _served(sims)
    assert served["a"] + served["b"] == 100  # the appended 40, and nothing again
    results = _exactly_once(tmp_path, 100)
    assert {r["deployment"] for r in results if r["line"] > 60} == {"a"}
    assert "changed" not in capsys.readouterr().err


def test_the_deployments_file_is_checked_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _lines(tmp_path / "in.jsonl", 5)
    entry = '[[deployments]]\nname = "east"\nendpoint = "https://east.openai.azure.com"\ndeployment = "d"\n'
    cases = {
        entry + 'api_key = "sk-123"\n': "a key in the file (api_key) is refused",
        entry + 'api_key_env = "K"\ntmp = 5\n': "unknown key(s) tmp",
        entry + 'api_key_env = "NOT_SET_ANYWHERE"\n': "api_key_env names NOT_SET_ANYWHERE, which is not set",
        entry + 'api_key_env = "K"\ntpm = "lots"\n': "tpm must be a int",
        entry + 'api_key_env = "K"\n' + entry + 'api_key_env = "K"\n': "each name must be different",
        "[deployments]\n": "lists no deployments",
    }
    monkeypatch.setenv("K", "a-key")
    for text, message in cases.items():
        (tmp_path / "pool.toml").write_text(text)
        assert main(["in.jsonl", "--deployments", "pool.toml", "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert "sk-123" not in err
    (tmp_path / "pool.toml").write_text(entry + 'api_key_env = "K"\n')
    assert main(["in.jsonl", "--deployments", "pool.toml", "--tpm", "1000", "-q"]) == 2
    assert "--tpm and --deployments do not mix" in capsys.readouterr().err
    assert not (tmp_path / "in.results.jsonl").exists()


def test_simulate_gives_each_deployment_its_own_server_and_quota(tmp_path: Path) -> None:
    """docs/pools.md's demo of a pool: examples/pool.toml, simulated, with no keys set."""
    _lines(tmp_path / "in.jsonl", 200)
    pool_file = Path(__file__).parents[1] / "examples" / "pool.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
    argv = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--simulate", "--deployments", str(pool_file)]
    done = subprocess.run([*argv, "--sim-latency-ms", "20", "--log-format", "json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = next(e for e in map(json.loads, done.stderr.splitlines()) if e["event"] == "summary")
    assert [d["name"] for d in summary["deployments"]] == ["east", "west"]
    assert summary["cost_usd"] > 0  # gpt-4o-mini is in the price table
    assert {r["deployment"] for r in _exactly_once(tmp_path, 200)} == {"east", "west"}


def test_a_pool_can_mix_a_key_and_an_entra_id_token_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _lines(tmp_path / "in.jsonl", 80)
    with pool(tmp_path, monkeypatch, keyed=SimConfig(api_key="k-1"), entra=SimConfig(entra_only=True)) as sims:
        text = (tmp_path / "pool.toml").read_text()
        command = f"{sys.executable} -m asyncbatch.simulator.tokens 60"
        text = text.replace('api_key_env = "KEY_ENTRA"', f"token_command = {json.dumps(command)}")
        (tmp_path / "pool.toml").write_text(text)
        code = main(["in.jsonl", "--deployments", "pool.toml", "-q"])
    assert code == 0
    assert {r["deployment"] for r in _exactly_once(tmp_path, 80)} == {"keyed", "entra"}
    assert sims["entra"].tokens_seen and sims["entra"].statuses["401"] == 0


def test_each_deployment_learns_its_own_servers_charge_and_the_pool_draws_few_429s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One server charges twice the client's estimate, the other its own estimate; both quotas are given."""
    _lines(tmp_path / "in.jsonl", 500)
    fair = SimConfig(api_key="k-fair", tpm=600_000, rpm=6_000, latency=0.02)
    dear = SimConfig(api_key="k-dear", tpm=600_000, rpm=6_000, latency=0.02, charging=Charging(factor=2.0))
    with pool(tmp_path, monkeypatch, fair=fair, dear=dear) as sims:
        code = main(["in.jsonl", "--deployments", "pool.toml", "-c", "50", "-q"])
        throttled = sum(sim.statuses["429"] for sim in sims.values())
        served = _served(sims)
    assert code == 0
    _exactly_once(tmp_path, 500)
    assert throttled <= 10  # at most 2% of 500
    assert served["fair"] > served["dear"]  # the dearer server's quota holds fewer of these requests

"""Placement by load (:func:`salon.cluster.placement.choose_node`), sans-I/O."""

from __future__ import annotations

from salon.cluster.load import CPU_POINTS, NodeLoad, load_points
from salon.cluster.placement import Candidate, choose_node


def view(**loads: int) -> dict[str, Candidate]:
    return {name: Candidate(name, f"http://{name}", load) for name, load in loads.items()}


def chosen(here: str, nodes: dict[str, Candidate], hosts: set[str], margin: int = 3) -> str | None:
    node = choose_node(here, nodes, hosts, margin)
    return None if node is None else node.name


def test_a_new_session_stays_unless_its_node_is_overloaded() -> None:
    assert chosen("a", view(a=2, b=0, c=0), set()) is None, "2 above the least: not overloaded"
    assert chosen("a", view(a=3, b=1, c=0), set()) == "c", "to the least loaded"
    assert chosen("a", view(a=5, b=0, c=0), set()) == "b", "ties go to the name"


def test_a_hosted_session_goes_to_a_host_that_is_not_overloaded() -> None:
    assert chosen("a", view(a=0, b=2, c=0), {"b"}) == "b", "no new pipe for it"
    assert chosen("a", view(a=0, b=2, c=0), {"a", "b"}) is None, "here hosts it"
    assert chosen("a", view(a=4, b=2, c=1), {"a", "b"}) == "b", "here overloaded, another host is not"
    assert chosen("a", view(a=9, b=2, c=1), {"b", "c"}) == "c", "the least loaded of the hosts"
    assert chosen("a", view(a=1, b=5, c=0), {"b"}) is None, "its host overloaded, here is not"
    assert chosen("a", view(a=6, b=5, c=0), {"b"}) == "c", "all overloaded: the least loaded"


def test_no_placement_without_a_margin_a_url_or_a_view_of_this_node() -> None:
    assert chosen("a", view(a=9, b=0), set(), margin=0) is None
    nodes = view(a=9) | {"b": Candidate("b", "", 0)}
    assert chosen("a", nodes, set()) is None, "a node without a client URL is sent nobody"
    assert chosen("z", view(a=0), set()) is None


def loads(**work: tuple[int, int, float]) -> dict[str, Candidate]:
    """Nodes by (connections, consumers, worker CPU utilisation), their load figures."""
    return view(**{name: load_points(*w) for name, w in work.items()})


def test_a_node_busy_forwarding_media_is_loaded_with_few_connections() -> None:
    # a: 2 connections but 40 consumers (e.g. 2 clients subscribed to 20 streams each) on
    # workers at 30 %; b: 20 idle connections; c: 5 connections, a little media.
    nodes = loads(a=(2, 40, 0.3), b=(20, 0, 0.0), c=(5, 4, 0.02))
    assert nodes["a"].load == 72 and nodes["b"].load == 20 and nodes["c"].load == 11
    assert chosen("a", nodes, set(), margin=10) == "c", "media-heavy: overloaded, to the least loaded"
    assert chosen("b", nodes, set(), margin=10) is None, "9 points above the least: stays"
    assert chosen("c", nodes, {"a"}, margin=10) is None, "its host busy with media: not sent there"
    assert chosen("b", nodes, {"a", "b"}, margin=10) is None


def test_busy_workers_alone_make_a_node_overloaded() -> None:
    nodes = loads(a=(1, 0, 0.9), b=(8, 2, 0.05))
    assert nodes["a"].load == 91 and nodes["b"].load == 15
    assert chosen("a", nodes, set(), margin=10) == "b"
    assert chosen("b", nodes, {"a"}, margin=10) is None, "the session's host is overloaded"


def test_a_connection_heavy_node_is_loaded_without_media() -> None:
    nodes = loads(a=(30, 0, 0.0), b=(3, 6, 0.1))
    assert chosen("a", nodes, set(), margin=10) == "b"
    assert chosen("b", nodes, set(), margin=10) is None


def test_the_load_figure_caps_the_cpu_part() -> None:
    assert load_points(3, 4, 0.0) == 7
    assert load_points(0, 0, 1.7) == int(CPU_POINTS), "more than every worker busy: capped"
    assert load_points(0, 0, -0.2) == 0


def test_the_cpu_part_is_the_workers_mean_utilisation_smoothed() -> None:
    load = NodeLoad()
    load.sample(10.0, {101: 5.0, 102: 1.0})
    assert load.cpu == 0.0, "one sample gives no utilisation yet"
    load.sample(11.0, {101: 6.0, 102: 1.0})  # worker 101 busy for the whole second, 102 idle
    assert load.cpu == 0.25, "mean 0.5, half of it into the average"
    load.sample(12.0, {101: 7.0, 102: 2.0})  # both busy
    assert load.cpu == 0.625
    assert load.points(2, 3) == 68, "2 connections, 3 consumers, 62.5 CPU points"
    load.sample(13.0, {101: 7.0, 103: 0.5})  # 102 died, 103 replaced it: counts from its next sample
    assert load.cpu == 0.3125
    for t in range(14, 30):
        load.sample(float(t), {101: 7.0, 103: 0.5})
    assert load.points(0, 0) == 0, "idle workers: the CPU part decays to nothing"
    load.sample(31.0, {})
    assert load.cpu == 0.0 and load.points(1, 0) == 1, "no workers: connections only"

"""Placement by load (:func:`salon.cluster.placement.choose_node`), sans-I/O."""

from __future__ import annotations

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

"""The type compatibility rule of typed edges: JSON Schema produced against JSON Schema read."""

from __future__ import annotations

import datetime
import uuid
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from datagraph.registration import type_schema
from web.compat import describe_schema, incompatibility


class Order(BaseModel):
    id: int
    customer: str
    amount: float = 0.0


class OrderWithNote(BaseModel):
    id: int
    customer: str
    amount: float = 0.0
    note: str = ""


class OrderBrief(BaseModel):
    id: int
    customer: str


class StrictOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    customer: str


class Invoice(BaseModel):
    number: str
    total: float


class IntOrder(BaseModel):
    id: int
    customer: int


class Tree(BaseModel):
    value: int
    children: list[Tree] = []


class OtherTree(BaseModel):
    value: float
    children: list[OtherTree] = []


class StrTree(BaseModel):
    value: str
    children: list[StrTree] = []


class Unknown:
    """A class pydantic cannot describe: its schema is {} (unknown)."""


def fits(produced: Any, read: Any) -> bool:
    return incompatibility(type_schema(produced), type_schema(read)) is None


@pytest.mark.parametrize(("produced", "read"), [
    (int, int), (int, float), (bool, int), (bool, float), (float, float), (str, str),
    (type(None), type(None)),
    (datetime.datetime, datetime.datetime), (bytes, bytes),
])
def test_scalars_that_fit(produced: Any, read: Any) -> None:
    assert fits(produced, read)


@pytest.mark.parametrize(("produced", "read"), [
    (str, int), (float, int), (int, str), (int, bool), (str, bool), (type(None), int), (str, type(None)),
    (datetime.datetime, str), (str, datetime.datetime), (bytes, str), (uuid.UUID, str), (int, list[int]),
])
def test_scalars_that_do_not(produced: Any, read: Any) -> None:
    assert not fits(produced, read)


def test_any_and_unknown_match_everything() -> None:
    for other in (int, str, list[int], dict[str, int], Order, int | None):
        assert fits(Any, other) and fits(other, Any)
        assert fits(Unknown, other) and fits(other, Unknown)
    assert incompatibility({}, {}) is None


def test_unions() -> None:
    assert fits(int, int | None)
    assert fits(int | bool, float)
    assert not fits(int | None, int)  # None may arrive
    assert fits(int | None, float | None)
    assert not fits(str | int, int | None)
    problem = incompatibility(type_schema(int | None), type_schema(int))
    assert problem is not None and "None" in str(problem) and "int" in str(problem)


def test_literals() -> None:
    assert fits(Literal["a", "b"], str)
    assert fits(Literal["a"], Literal["a", "b"])
    assert not fits(Literal["a", "c"], Literal["a", "b"])
    assert not fits(str, Literal["a", "b"])  # an open string into a closed set
    assert fits(Literal[1, 2], float)
    assert not fits(Literal[1, 2], str)


def test_lists_tuples_sets() -> None:
    assert fits(list[int], list[float])
    assert not fits(list[str], list[int])
    assert fits(tuple[int, ...], list[int])
    assert fits(set[int], list[float])
    assert fits(tuple[int, int], list[int])
    assert not fits(tuple[int, str], list[int])
    assert fits(tuple[int, str], tuple[float, str])
    assert not fits(tuple[int, str], tuple[int, str, str])
    assert fits(list[list[int]], list[list[float]])
    problem = incompatibility(type_schema(list[list[str]]), type_schema(list[list[int]]))
    assert problem is not None and problem.where == "[][]"


def test_dicts() -> None:
    assert fits(dict[str, int], dict[str, float])
    assert not fits(dict[str, str], dict[str, int])
    assert fits(dict[str, Any], dict[str, int])  # values unknown: they match
    assert fits(dict[str, int], dict[str, Any])
    assert not fits(dict[str, int], list[int])


def test_models_compared_by_their_schemas() -> None:
    assert fits(Order, Order)
    assert fits(OrderWithNote, Order)  # an extra field is fine where the reader allows extras
    assert fits(Order, OrderBrief)
    assert fits(OrderBrief, Order)  # 'amount' has a default: not required
    assert not fits(Order, StrictOrder)  # the reader forbids 'amount'
    assert not fits(Order, Invoice)
    problem = incompatibility(type_schema(Order), type_schema(Invoice))
    assert problem is not None and "'number'" in str(problem)
    field = incompatibility(type_schema(Order), type_schema(IntOrder))
    assert field is not None and field.where == ".customer" and "str" in field.reason
    assert fits(list[Order], list[OrderBrief])
    assert not fits(list[Order], list[Invoice])
    assert fits(Order | None, OrderBrief | None)
    assert not fits(Order | None, OrderBrief)


def test_models_and_dicts() -> None:
    assert fits(dict[str, Any], Order)  # keys are unknown until run time
    assert not fits(dict[str, int], Order)  # an int cannot be the customer
    assert fits(Order, dict[str, Any])
    assert fits(OrderBrief, dict[str, int | str])
    assert not fits(Order, dict[str, int])  # customer is a str
    assert not fits(Order, int)


def test_recursive_models_terminate() -> None:
    assert fits(Tree, Tree)
    assert fits(Tree, OtherTree)  # int values into float values, all the way down
    assert not fits(Tree, StrTree)
    assert not fits(OtherTree, Tree)


def test_describe_schema() -> None:
    assert describe_schema(type_schema(int)) == "int"
    assert describe_schema(type_schema(list[Order])) == "list[Order]"
    assert describe_schema(type_schema(int | None)) == "int | None"
    assert describe_schema(type_schema(dict[str, float])) == "dict[str, float]"
    assert describe_schema(type_schema(Literal["a"])) == "Literal['a']"
    assert describe_schema({}) == "Any"

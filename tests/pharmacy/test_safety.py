"""The safety policy on hand-made tables: each reason, its precedence, records, and the checks switched off."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipelines.pharmacy.served import (
    ALLOWED,
    REASONS,
    PolicyRules,
    SafetyPolicy,
    SafetyTables,
    location_problem,
)

# molecules: 0 metformin, 1 ciprofloxacin, 2 calcium carbonate, 3 paracetamol
# items: 1 metformin (rx), 2 metformin (rx, other maker), 3 ciprofloxacin (rx), 4 calcium carbonate,
#        5 paracetamol (ships to pincodes 11xxxx and 400xxx only), 6 paracetamol (restricted), 7 calcium carbonate
#        (out of stock), 8 rx of unknown composition
MOLECULES = {1: [0], 2: [0], 3: [1], 4: [2], 5: [3], 6: [3], 7: [2], 8: []}
N = 8


def tables() -> SafetyTables:
    lengths = [0] + [len(MOLECULES[i]) for i in range(1, N + 1)]
    indptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    flag = np.zeros(N + 1, dtype=bool)
    rx, restricted, unavailable = flag.copy(), flag.copy(), flag.copy()
    rx[[1, 2, 3, 8]] = True
    restricted[6] = True
    unavailable[7] = True
    limited = flag.copy()
    limited[5] = True
    return SafetyTables(rx, restricted, unavailable, indptr,
                        np.array([m for i in range(1, N + 1) for m in MOLECULES[i]], dtype=np.int64),
                        np.array(["metformin", "ciprofloxacin", "calcium carbonate", "paracetamol"]),
                        np.array([[1, 2]], dtype=np.int64), limited, np.array(["11", "400"]),
                        np.array([0, 1, 2], dtype=np.int64), np.array([5, 5], dtype=np.int64))


ALL = np.arange(1, N + 1)


def named(codes: np.ndarray) -> dict[int, str]:
    return {int(item): REASONS[code - 1] for item, code in zip(ALL, codes, strict=True) if code != ALLOWED}


def test_an_anonymous_request_gets_no_prescription_only_restricted_or_unavailable_product():
    policy = SafetyPolicy(tables())
    assert named(policy.reasons(ALL, policy.context())) == {
        1: "rx_without_record", 2: "rx_without_record", 3: "rx_without_record", 6: "restricted",
        7: "unavailable", 8: "rx_without_record"}


def test_a_purchase_or_prescription_of_the_molecule_lets_every_maker_of_it_through():
    policy = SafetyPolicy(tables())
    removed = named(policy.reasons(ALL, policy.context(records=np.array([1]))))
    assert 1 not in removed and 2 not in removed, "a record for metformin covers another maker's metformin"
    assert removed[3] == "rx_without_record"
    # an rx product whose composition is unknown needs a record of that product itself
    assert named(policy.reasons(ALL, policy.context(records=np.array([8])))).get(8) is None


def test_nothing_interacts_with_the_session_or_the_cart_and_no_molecule_is_in_the_cart_twice():
    policy = SafetyPolicy(tables())
    session = policy.context(session=np.array([3]), records=np.array([3]))  # on ciprofloxacin
    assert named(policy.reasons(ALL, session))[4] == "interacts"
    cart = policy.context(cart=np.array([5]))
    assert named(policy.reasons(ALL, cart))[5] == "duplicate_molecule"
    # a session item's molecule may be recommended again (substitutes on a product page), a cart's may not
    assert 5 not in named(policy.reasons(ALL, policy.context(session=np.array([5]))))


def test_the_first_reason_in_order_is_the_one_reported():
    policy = SafetyPolicy(tables())
    ctx = policy.context(cart=np.array([4, 3]), records=np.array([3]))
    removed = named(policy.reasons(ALL, ctx))
    assert removed[7] == "unavailable", "unavailable comes before interacts and duplicate_molecule"
    assert removed[4] == "interacts", "4 is both in the cart's molecules and interacting; interacts comes first"


def test_switched_off_checks_let_their_items_through():
    policy = SafetyPolicy(tables(), PolicyRules.from_checks("restricted"))
    assert named(policy.reasons(ALL, policy.context(cart=np.array([3])))) == {6: "restricted"}
    assert PolicyRules.from_checks(PolicyRules(*[False] * 5).checks()) == PolicyRules(*[False] * 5)
    with pytest.raises(ValueError, match=r"policy_checks names \['typo'\]"):
        PolicyRules.from_checks("restricted,typo")


def test_ids_outside_the_tables_and_padding_are_left_to_the_caller():
    policy = SafetyPolicy(tables())
    assert policy.reasons(np.array([0, -1, N + 5]), policy.context()).tolist() == [0, 0, 0]
    assert policy.allowed(np.array([5, 6]), policy.context()).tolist() == [True, False]
    counts = np.bincount(policy.reasons(ALL, policy.context()), minlength=len(REASONS) + 1)[1:]
    assert {r: int(n) for r, n in zip(REASONS, counts, strict=True) if n} == {
        "restricted": 1, "unavailable": 1, "rx_without_record": 4}


def test_tables_round_trip_and_bad_tables_are_named(tmp_path):
    path = tmp_path / "policy.npz"
    path.write_bytes(tables().to_bytes())
    loaded = SafetyTables.load(path)
    assert loaded.molecule_names.tolist() == tables().molecule_names.tolist()
    assert (loaded.molecule_indptr == tables().molecule_indptr).all()
    broken = SafetyTables(**{**tables().__dict__, "restricted": np.zeros(3, dtype=bool)})
    with pytest.raises(ValueError, match="policy table restricted has 3 rows"):
        broken.to_bytes()
    np.savez(buffer := io.BytesIO(), rx_required=np.zeros(2, bool))
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="policy tables lack"):
        SafetyTables.load(path)


@pytest.mark.parametrize(("location", "ships"), [
    ("110017", True), ("400 001", True), ("401-101", False), ("560001", False), ("", True),
])
def test_a_product_shipped_to_some_regions_is_dropped_elsewhere_and_kept_when_the_location_is_unknown(location, ships):
    policy = SafetyPolicy(tables())
    codes = named(policy.reasons(ALL, policy.context(location=location)))
    assert ("unavailable" != codes.get(5)) == ships, codes
    assert codes.get(4) is None, "a product without delivery limits ships everywhere"
    off = SafetyPolicy(tables(), PolicyRules(drop_unavailable=False))
    assert 5 not in named(off.reasons(ALL, off.context(location=location)))


@pytest.mark.parametrize(("text", "bad"), [
    ("110017", False), ("SW1A 1AA", False), ("", False), ("11;0", True), ("1" * 17, True), ("११००", True),
])
def test_a_location_is_a_postcode_or_empty(text, bad):
    assert (location_problem(text) is not None) == bad

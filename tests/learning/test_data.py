import io
import json
import math

import numpy as np
import pytest

from federation.learning import DataError, Schema, load_csv, schema_from_csv, train_eval_split

SCHEMA = Schema(
    features=("age", "dose"),
    label="outcome",
    classes=("no", "yes"),
    bounds=((0.0, 100.0), (10.0, 20.0)),
)


def csv_text(*lines):
    return io.StringIO("\n".join(lines) + "\n")


def test_loads_scales_into_declared_bounds_and_clips():
    X, y = load_csv(csv_text("id,age,dose,outcome", "a,50,15,yes", "b,120,5,no", "c, 0 ,20, no "), SCHEMA)
    assert X.dtype == np.float32
    np.testing.assert_allclose(X, [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    assert y.tolist() == [1, 0, 0]


def test_columns_may_come_in_any_order_and_extra_columns_are_ignored():
    X, y = load_csv(csv_text("outcome,note,dose,age", "yes,x,12,25"), SCHEMA)
    np.testing.assert_allclose(X, [[0.25, 0.2]])
    assert y.tolist() == [1]


def test_numeric_labels_compare_as_strings_after_strip():
    schema = Schema(features=("x",), label="y", classes=("0", "1"), bounds=((0, 1),))
    X, y = load_csv(csv_text("x,y", "0.2, 1", "0.4,0 "), schema)
    assert y.tolist() == [1, 0]
    # "1.0" is not the declared class "1": compared as text, not as numbers.
    with pytest.raises(DataError) as info:
        load_csv(csv_text("x,y", "0.2,1.0"), schema)
    assert (info.value.row, info.value.column) == (2, "y")


def test_missing_column_is_named():
    with pytest.raises(DataError) as info:
        load_csv(csv_text("age,outcome", "1,yes"), SCHEMA)
    assert info.value.column == "dose" and info.value.row == 1
    assert "column 'dose'" in str(info.value)


def test_non_numeric_value_names_row_and_column():
    with pytest.raises(DataError) as info:
        load_csv(csv_text("age,dose,outcome", "1,12,yes", "2,12,no", "3,twelve,yes"), SCHEMA)
    assert (info.value.row, info.value.column) == (4, "dose")
    assert str(info.value) == "row 4, column 'dose': not a number: 'twelve'"


@pytest.mark.parametrize("value", ["nan", "inf", ""])
def test_non_finite_or_empty_values_are_refused(value):
    with pytest.raises(DataError) as info:
        load_csv(csv_text("age,dose,outcome", f"{value},12,yes"), SCHEMA)
    assert (info.value.row, info.value.column) == (2, "age")


def test_label_outside_declared_classes_names_row_and_column():
    with pytest.raises(DataError) as info:
        load_csv(csv_text("age,dose,outcome", "1,12,yes", "2,12,maybe"), SCHEMA)
    assert (info.value.row, info.value.column) == (3, "outcome")
    assert "'maybe'" in str(info.value)


def test_empty_file_and_header_only_file_are_errors():
    with pytest.raises(DataError, match="empty"):
        load_csv(io.StringIO(""), SCHEMA)
    with pytest.raises(DataError, match="no data rows"):
        load_csv(csv_text("age,dose,outcome"), SCHEMA)


def test_ragged_row_is_an_error_naming_the_row():
    with pytest.raises(DataError) as info:
        load_csv(csv_text("age,dose,outcome", "1,12,yes", "2,12"), SCHEMA)
    assert info.value.row == 3


def test_blank_lines_are_skipped_and_rows_keep_their_file_numbers():
    with pytest.raises(DataError) as info:
        load_csv(csv_text("age,dose,outcome", "1,12,yes", "", "2,x,no"), SCHEMA)
    assert info.value.row == 4


def test_errors_are_value_errors():
    assert issubclass(DataError, ValueError)


def test_loads_from_a_path(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("age,dose,outcome\n100,20,yes\n", encoding="utf-8")
    X, y = load_csv(path, SCHEMA)
    np.testing.assert_allclose(X, [[1.0, 1.0]])


def test_schema_round_trips_through_json():
    again = Schema.from_dict(json.loads(json.dumps(SCHEMA.to_dict())))
    assert again == SCHEMA
    assert SCHEMA.model_spec("mlp", [8]) == {"kind": "mlp", "n_features": 2, "n_classes": 2, "hidden": [8]}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(features=("a", "a"), label="y", classes=("0", "1"), bounds=((0, 1), (0, 1))),
        dict(features=("a",), label="a", classes=("0", "1"), bounds=((0, 1),)),
        dict(features=("a",), label="y", classes=("0",), bounds=((0, 1),)),
        dict(features=("a",), label="y", classes=("0", "1"), bounds=((1, 0),)),
        dict(features=("a", "b"), label="y", classes=("0", "1"), bounds=((0, 1),)),
    ],
)
def test_inconsistent_schemas_are_refused(kwargs):
    with pytest.raises(DataError):
        Schema(**kwargs)


def test_schema_from_csv_derives_features_classes_and_bounds():
    schema = schema_from_csv(csv_text("a,label,b", "1,10,-2", "3,2,5", "2,10,0"), label="label")
    assert schema.features == ("a", "b")
    assert schema.classes == ("2", "10")  # numeric labels sorted as numbers
    assert schema.bounds == ((1.0, 3.0), (-2.0, 5.0))
    X, y = load_csv(csv_text("a,label,b", "1,10,-2", "3,2,5"), schema)
    np.testing.assert_allclose(X, [[0, 0], [1, 1]])
    assert y.tolist() == [1, 0]


def test_schema_from_csv_sorts_text_labels_and_refuses_non_numeric_features():
    assert schema_from_csv(csv_text("x,y", "1,b", "2,a"), label="y").classes == ("a", "b")
    with pytest.raises(DataError) as info:
        schema_from_csv(csv_text("x,y", "1,b", "?,a"), label="y")
    assert (info.value.row, info.value.column) == (3, "x")
    with pytest.raises(DataError) as info:
        schema_from_csv(csv_text("x,y", "1,b"), label="z")
    assert info.value.column == "z"


def test_split_is_seeded_disjoint_and_complete():
    X = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50)
    a = train_eval_split(X, y, eval_fraction=0.2, seed=1)
    b = train_eval_split(X, y, eval_fraction=0.2, seed=1)
    c = train_eval_split(X, y, eval_fraction=0.2, seed=2)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[3], c[3])
    X_tr, y_tr, X_ev, y_ev = a
    assert len(y_ev) == 10 and len(y_tr) == 40
    assert sorted(np.concatenate([y_tr, y_ev]).tolist()) == list(range(50))
    np.testing.assert_array_equal(X_tr[:, 0], 2 * y_tr)  # rows stay with their labels


# --- declared per-feature transforms ------------------------------------------------------
LOG_SCHEMA = Schema(
    features=("age", "area"),
    label="outcome",
    classes=("no", "yes"),
    bounds=((0.0, 100.0), (0.0, math.e**2 - 1)),
    transforms={"area": "log1p"},
)


def test_log1p_transforms_the_value_and_its_bounds_before_scaling():
    X, _ = load_csv(csv_text("age,area,outcome", f"50,{math.e - 1},yes", f"0,{math.e**2 - 1},no", "100,0,no"), LOG_SCHEMA)
    # area: log1p maps [0, e^2 - 1] onto [0, 2], so e - 1 lands in the middle.
    np.testing.assert_allclose(X, [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]], atol=1e-6)


def test_values_are_clipped_into_the_raw_bounds_before_the_transform():
    X, _ = load_csv(csv_text("age,area,outcome", "50,-5,yes", "50,1e9,no"), LOG_SCHEMA)
    np.testing.assert_allclose(X[:, 1], [0.0, 1.0])


def test_a_schema_without_transforms_scales_and_serialises_as_before():
    raw = np.array([[50.0, 15.0], [120.0, 5.0], [-3.0, 12.5]])
    expected = (np.clip(raw, [0.0, 10.0], [100.0, 20.0]) - [0.0, 10.0]) / [100.0, 10.0]
    np.testing.assert_array_equal(SCHEMA.scale(raw), expected.astype(np.float32))
    assert "transforms" not in SCHEMA.to_dict()
    assert SCHEMA.transforms == () and SCHEMA.transform_of("age") == "none"


def test_transforms_round_trip_through_json():
    data = json.loads(json.dumps(LOG_SCHEMA.to_dict()))
    assert data["transforms"] == {"area": "log1p"}
    again = Schema.from_dict(data)
    assert again == LOG_SCHEMA and hash(again) == hash(LOG_SCHEMA)
    assert again.transform_of("area") == "log1p" and again.transform_of("age") == "none"


def test_an_explicit_none_transform_is_the_same_as_none_declared():
    explicit = Schema.from_dict({**SCHEMA.to_dict(), "transforms": {"age": "none", "dose": "none"}})
    assert explicit == SCHEMA
    assert Schema.from_dict({**SCHEMA.to_dict(), "transforms": None}) == SCHEMA


def test_unknown_transform_name_is_refused_naming_the_column():
    with pytest.raises(DataError) as info:
        Schema.from_dict({**SCHEMA.to_dict(), "transforms": {"dose": "log"}})
    assert info.value.column == "dose"
    assert str(info.value) == "column 'dose': unknown transform 'log'; known: ['log1p', 'none', 'sqrt']"


def test_log_of_a_negative_lower_bound_is_refused():
    with pytest.raises(DataError) as info:
        Schema(features=("x",), label="y", classes=("0", "1"), bounds=((-1.0, 5.0),), transforms={"x": "log1p"})
    assert info.value.column == "x"
    assert "needs a lower bound >= 0" in str(info.value) and "-1.0" in str(info.value)


def test_a_transform_of_a_column_that_is_not_a_feature_is_refused():
    with pytest.raises(DataError) as info:
        Schema.from_dict({**SCHEMA.to_dict(), "transforms": {"outcome": "log1p"}})
    assert info.value.column == "outcome"


@pytest.mark.parametrize("transforms", ["log1p", 3, [["age"]]])
def test_transforms_that_are_not_a_mapping_are_refused(transforms):
    with pytest.raises(DataError, match="transforms must map feature names to transform names"):
        Schema.from_dict({**SCHEMA.to_dict(), "transforms": transforms})


def test_sqrt_transform_is_scale_free_after_min_max():
    small = Schema(features=("x",), label="y", classes=("0", "1"), bounds=((0.0, 0.04),), transforms={"x": "sqrt"})
    large = Schema(features=("x",), label="y", classes=("0", "1"), bounds=((0.0, 400.0),), transforms={"x": "sqrt"})
    np.testing.assert_allclose(small.scale(np.array([[0.01]])), [[0.5]])
    np.testing.assert_allclose(large.scale(np.array([[100.0]])), [[0.5]])


# --- centring ------------------------------------------------------------------------------
def test_a_centred_schema_scales_into_minus_one_one():
    centred = Schema.from_dict({**SCHEMA.to_dict(), "centred": True})
    X, _ = load_csv(csv_text("age,dose,outcome", "50,15,yes", "120,5,no", "25,20,no"), centred)
    np.testing.assert_allclose(X, [[0.0, 0.0], [1.0, -1.0], [-0.5, 1.0]])


def test_centring_composes_with_transforms():
    centred = Schema.from_dict({**LOG_SCHEMA.to_dict(), "centred": True})
    np.testing.assert_allclose(centred.scale(np.array([[0.0, math.e - 1]])), [[-1.0, 0.0]], atol=1e-6)


def test_a_constant_feature_maps_to_zero_centred_or_not():
    for centred in (False, True):
        schema = Schema(features=("x",), label="y", classes=("0", "1"), bounds=((3.0, 3.0),), centred=centred)
        np.testing.assert_array_equal(schema.scale(np.array([[3.0], [7.0]])), [[0.0], [0.0]])


def test_centred_round_trips_through_json_and_is_absent_when_false():
    centred = Schema.from_dict({**SCHEMA.to_dict(), "centred": True})
    assert centred.to_dict()["centred"] is True
    assert Schema.from_dict(json.loads(json.dumps(centred.to_dict()))) == centred
    assert "centred" not in SCHEMA.to_dict() and not SCHEMA.centred
    assert Schema.from_dict({**SCHEMA.to_dict(), "centred": False}) == SCHEMA


@pytest.mark.parametrize("value", ["yes", 1])
def test_centred_must_be_a_boolean(value):
    with pytest.raises(DataError, match="centred must be true or false"):
        Schema.from_dict({**SCHEMA.to_dict(), "centred": value})
    with pytest.raises(DataError, match="centred must be true or false"):
        Schema(features=("x",), label="y", classes=("0", "1"), bounds=((0, 1),), centred=value)


def test_a_null_centred_in_json_means_not_centred():
    assert Schema.from_dict({**SCHEMA.to_dict(), "centred": None}) == SCHEMA


def test_a_dataset_declaration_from_the_coordinator_loads_with_its_transforms_and_centring():
    declared = {
        "feature_names": ["a", "b"], "label_name": "y", "label_classes": ["0", "1"], "feature_bounds": [[0, 99], [-1, 1]],
        "feature_transforms": {"a": "log1p"}, "centred": True,
    }
    schema = Schema.from_declaration(declared)
    assert schema.transform_of("a") == "log1p" and schema.transform_of("b") == "none" and schema.centred
    # The top of a's log1p range maps to +1, the middle of b's range to 0.
    np.testing.assert_allclose(schema.scale(np.array([[99.0, 0.0]])), [[1.0, 0.0]], atol=1e-6)
    plain = Schema.from_declaration({k: v for k, v in declared.items() if k not in ("feature_transforms", "centred")})
    assert plain.transforms == () and not plain.centred

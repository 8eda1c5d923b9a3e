"""Series selection as a pure function: each default rule, the preferences, site rules, reasons."""
import pytest

from dsm_node.settings import Rule, Selection
from dsm_node.studies.selection import NO_ELIGIBLE_REASON, SeriesSummary, select_series

AXIAL_IOP = [1, 0, 0, 0, 1, 0]
CORONAL_IOP = [1, 0, 0, 0, 0, -1]


def ct(uid, n=100, thickness=1.0, image_type=("ORIGINAL", "PRIMARY", "AXIAL"), description="ABDOMEN", **extra):
    header = {"Modality": "CT", "ImageType": list(image_type), "SeriesDescription": description,
              "SliceThickness": thickness, "ImageOrientationPatient": AXIAL_IOP, **extra}
    return SeriesSummary(series_uid=uid, instance_count=n, header={k: v for k, v in header.items() if v is not None})


def decide(*series, **cfg):
    outcome = select_series(list(series), Selection(**cfg))
    return outcome, {d.series_uid: d for d in outcome.decisions}


def test_single_good_series_is_chosen_with_its_reason():
    outcome, by_uid = decide(ct("1.1"))
    assert outcome.chosen.series_uid == "1.1"
    assert by_uid["1.1"].selected and by_uid["1.1"].eligible
    assert outcome.reason == "axial, no contrast, 1 mm slices, 100 slices; best of 1 eligible series"


@pytest.mark.parametrize(
    "series, expected",
    [
        (ct("2", Modality="MR"), "modality MR is not CT"),
        (SeriesSummary("2", 100, {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}), "modality (missing) is not CT"),
        (ct("2", image_type=("DERIVED", "SECONDARY", "AXIAL")), "ImageType DERIVED\\SECONDARY\\AXIAL lacks ORIGINAL/PRIMARY"),
        (ct("2", image_type=("ORIGINAL", "SECONDARY")), "ImageType ORIGINAL\\SECONDARY lacks PRIMARY"),
        (ct("2", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
         "localizer/excluded image type LOCALIZER (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)"),
        (ct("2", image_type=("ORIGINAL", "PRIMARY", "SCOUT")),
         "localizer/excluded image type SCOUT (ImageType ORIGINAL\\PRIMARY\\SCOUT)"),
        (ct("2", n=19), "19 slices, fewer than the minimum 20"),
        (ct("2", thickness="5.5"), "slice thickness 5.5 mm exceeds 5 mm"),
    ],
)
def test_each_default_rule_rejects_with_its_reason(series, expected):
    outcome, by_uid = decide(series)
    assert outcome.chosen is None and outcome.reason == NO_ELIGIBLE_REASON
    assert by_uid["2"].reason == expected and not by_uid["2"].eligible


def test_boundaries_are_inclusive_and_values_may_be_strings():
    # 20 slices and 5 mm are allowed; DS values often arrive as strings, multi-values as 'A\\B'.
    s = SeriesSummary("3", 20, {"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL", "SliceThickness": "5"})
    outcome, _ = decide(s)
    assert outcome.chosen is s


def test_every_failure_of_a_series_is_reported():
    _, by_uid = decide(ct("4", n=2, thickness=10, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    reason = by_uid["4"].reason
    assert "LOCALIZER" in reason and "2 slices" in reason and "10 mm" in reason


def test_multiframe_counts_frames_and_unknown_thickness_is_not_a_rejection():
    enhanced = SeriesSummary("5", 1, {"Modality": "CT", "ImageType": ["ORIGINAL", "PRIMARY", "VOLUME"],
                                      "NumberOfFrames": "180", "ImageOrientationPatient": AXIAL_IOP})
    outcome, by_uid = decide(enhanced)
    assert outcome.chosen is enhanced
    assert by_uid["5"].reason.startswith("axial, no contrast, slice thickness unknown, 180 slices")


def test_axial_preferred_over_thinner_non_axial_and_geometry_counts_as_axial():
    coronal = ct("6.1", thickness=0.5, image_type=("ORIGINAL", "PRIMARY", "OTHER"), ImageOrientationPatient=CORONAL_IOP)
    axial_by_geometry = ct("6.2", thickness=3, image_type=("ORIGINAL", "PRIMARY"))
    outcome, by_uid = decide(coronal, axial_by_geometry)
    assert outcome.chosen is axial_by_geometry
    assert by_uid["6.1"].reason == "eligible but ranked below 6.2: not axial"


def test_venous_phase_beats_thinner_unenhanced_and_non_contrast_is_not_contrast():
    plain = ct("7.1", thickness=1, description="ABD NON-CONTRAST")
    arterial = ct("7.2", thickness=1, description="ABD ARTERIAL", ContrastBolusAgent="IOPAMIDOL")
    venous = ct("7.3", thickness=3, description="ABD PORTAL VENOUS 70s", ContrastBolusAgent="IOPAMIDOL")
    outcome, by_uid = decide(plain, arterial, venous)
    assert outcome.chosen is venous
    assert "preferred phase" in outcome.reason and "best of 3 eligible" in outcome.reason
    assert by_uid["7.1"].reason == "eligible but ranked below 7.3: no contrast rather than preferred phase"
    assert by_uid["7.2"].reason == "eligible but ranked below 7.3: contrast-enhanced rather than preferred phase"


def test_contrast_agent_beats_none_and_placeholder_agent_counts_as_none():
    none_written = ct("8.1", thickness=1, ContrastBolusAgent="NONE")
    enhanced = ct("8.2", thickness=2, ContrastBolusAgent="OMNIPAQUE 350")
    outcome, by_uid = decide(none_written, enhanced)
    assert outcome.chosen is enhanced
    assert "no contrast rather than contrast-enhanced" in by_uid["8.1"].reason


def test_then_thinnest_then_most_slices_then_uid():
    thick = ct("9.1", n=300, thickness=2.5)
    thin_few = ct("9.2", n=150, thickness=1.25)
    thin_many = ct("9.3", n=200, thickness=1.25)
    twin = ct("9.4", n=200, thickness=1.25)
    outcome, by_uid = decide(thick, thin_few, twin, thin_many)
    assert outcome.chosen is thin_many
    assert by_uid["9.1"].reason.endswith("thicker slices (2.5 mm vs 1.25 mm)")
    assert by_uid["9.2"].reason.endswith("fewer slices (150 vs 200)")
    assert by_uid["9.4"].reason.endswith("equal on every preference; the lower Series Instance UID wins")
    assert [d.series_uid for d in outcome.decisions] == ["9.1", "9.2", "9.4", "9.3"]  # input order kept


def test_configured_thresholds_apply():
    outcome, by_uid = decide(ct("10", n=50, thickness=3), min_slices=64, max_slice_thickness_mm=2)
    assert outcome.chosen is None
    assert by_uid["10"].reason == "50 slices, fewer than the minimum 64; slice thickness 3 mm exceeds 2 mm"


def test_exclude_rule_by_regex():
    bone = ct("11.1", description="ABD BONE KERNEL")
    soft = ct("11.2", thickness=2, description="ABD SOFT TISSUE")
    rules = [Rule(tag="SeriesDescription", action="exclude", regex="(?i)bone")]
    outcome, by_uid = decide(bone, soft, rules=rules)
    assert outcome.chosen is soft
    assert by_uid["11.1"].reason == "SeriesDescription 'ABD BONE KERNEL' matches exclude rule regex '(?i)bone'"


def test_include_rule_by_regex_and_missing_tag():
    abdomen = ct("12.1", thickness=3, BodyPartExamined="ABDOMEN")
    chest = ct("12.2", BodyPartExamined="CHEST")
    unknown = ct("12.3")
    rules = [Rule(tag="BodyPartExamined", action="include", regex="^(ABDOMEN|PELVIS)$")]
    outcome, by_uid = decide(abdomen, chest, unknown, rules=rules)
    assert outcome.chosen is abdomen
    assert by_uid["12.2"].reason == "BodyPartExamined 'CHEST' does not match include rule regex '^(ABDOMEN|PELVIS)$'"
    assert by_uid["12.3"].reason == "BodyPartExamined absent (include rule regex '^(ABDOMEN|PELVIS)$')"


def test_numeric_include_and_exclude_ranges():
    low_dose = ct("13.1", thickness=1, KVP="80")
    normal = ct("13.2", thickness=2, KVP="120")
    no_kvp = ct("13.3", thickness=3)
    rules = [
        Rule(tag="KVP", action="exclude", max=90),
        Rule(tag="SliceThickness", action="include", min=1.5, max=2.5),
    ]
    outcome, by_uid = decide(low_dose, normal, no_kvp, rules=rules)
    assert outcome.chosen is normal
    assert by_uid["13.1"].reason == ("KVP '80' matches exclude rule <= 90; "
                                     "SliceThickness '1' does not match include rule range [1.5, 2.5]")
    # An exclude rule needs a value to match; the include rule on thickness is what rejects it.
    assert by_uid["13.3"].reason == "SliceThickness '3' does not match include rule range [1.5, 2.5]"


def test_numeric_rule_does_not_match_text():
    outcome, by_uid = decide(ct("14", Manufacturer="ACME"), rules=[Rule(tag="Manufacturer", action="include", min=0)])
    assert outcome.chosen is None
    assert by_uid["14"].reason == "Manufacturer 'ACME' does not match include rule >= 0"


def test_empty_study_has_no_eligible_series():
    outcome = select_series([], Selection())
    assert outcome.chosen is None and outcome.decisions == () and outcome.reason == NO_ELIGIBLE_REASON

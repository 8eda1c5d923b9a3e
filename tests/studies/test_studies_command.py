"""``dsm-node studies``: the listing operators read."""
import datetime as dt
import json

from dsm_node.cli import main
from dsm_node.studies.service import StudyService
from tests.studies.studyrows import add_instances, ct_header

T0 = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=dt.timezone.utc)


def test_lists_studies_with_state_selection_and_filter(make_ctx, tmp_path, capsys, monkeypatch):
    ctx = make_ctx()
    monkeypatch.setenv("DSM_NODE__DATABASE__URL", ctx.settings.database_url)
    add_instances(ctx, "1.2.3", "1.2.3.1", 30, at=T0, header=ct_header("ABD PV", 2))
    add_instances(ctx, "1.2.4", "1.2.4.1", 2, at=T0, header=ct_header("SCOUT", 1, ("ORIGINAL", "PRIMARY", "LOCALIZER")))
    add_instances(ctx, "1.2.5", "1.2.5.1", 7, at=T0 + dt.timedelta(hours=1))
    StudyService(ctx).run_once(T0 + dt.timedelta(minutes=5))

    assert main(["studies", "--json", "--data-dir", str(tmp_path)]) == 0
    rows = {r["study_uid"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["1.2.5", "1.2.4", "1.2.3"]  # most recent first
    assert rows["1.2.3"]["state"] == "selected" and rows["1.2.3"]["selected_series"] == "1.2.3.1"
    assert rows["1.2.3"]["reason"].startswith("axial, preferred phase, 2 mm slices") and rows["1.2.3"]["instances"] == 30
    assert rows["1.2.4"]["state"] == "no_eligible" and rows["1.2.4"]["reason"] == "no eligible CT series"
    assert rows["1.2.5"]["state"] == "receiving" and rows["1.2.5"]["revision"] == 1
    assert rows["1.2.5"]["last_received"].startswith("2026-03-01 09:00:00")

    assert main(["studies", "--state", "no_eligible", "--data-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["STUDY_UID", "REVISION", "INSTANCES", "STATE", "SELECTED_SERIES", "REASON", "LAST_RECEIVED"]
    assert len(table) == 2 and table[1].startswith("1.2.4 ") and "no eligible CT series" in table[1]

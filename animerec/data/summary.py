"""`animerec data summary`: validates the Kaggle files and says what training will see."""

from __future__ import annotations

import os

from animerec.data import files, interactions, kaggle


def summarize(
    data_dir: str,
    liked_filter: interactions.LikedFilter = interactions.LikedFilter(),
    split: interactions.SplitConfig = interactions.SplitConfig(),
) -> dict:
    """Reads every file in `data_dir` once and returns the counts as a dict."""
    catalog, catalog_reports = kaggle.read_catalog(data_dir)
    animelist_path = os.path.join(data_dir, kaggle.ANIMELIST_CSV)
    report = kaggle.ReadReport(animelist_path)
    stats = interactions.ScanStats()
    anime_with_liked = set()
    for block in interactions.scan_animelist(
        animelist_path, catalog["anime_id"].to_numpy(), liked_filter, split, report, stats
    ):
        anime_with_liked.update(block.anime_id[block.liked].tolist())

    result = {
        "data_dir": data_dir,
        "catalog": {
            "anime": int(len(catalog)),
            "without_synopsis": int((catalog["synopsis"] == "").sum()),
            "without_genres": int((catalog["genres"] == "").sum()),
            "without_score": int(catalog["score"].isna().sum()),
            "never_liked": int(len(catalog) - len(anime_with_liked)),
            "files": [r.to_dict() for r in catalog_reports],
        },
        "animelist": report.to_dict(),
        "interactions": stats.to_dict(),
    }
    rating_path = os.path.join(data_dir, kaggle.RATING_COMPLETE_CSV)
    if files.exists(rating_path):
        rating_report = kaggle.ReadReport(rating_path)
        ratings = kaggle.read_rating_complete(rating_path, rating_report)
        result["rating_complete"] = dict(rating_report.to_dict(), users=int(ratings["user_id"].nunique()))
    status_path = os.path.join(data_dir, kaggle.WATCHING_STATUS_CSV)
    if files.exists(status_path):
        result["watching_status"] = kaggle.read_watching_status(status_path)
    result["_reports"] = [*catalog_reports, report]
    return result


def format_summary(result: dict, split: interactions.SplitConfig = interactions.SplitConfig()) -> str:
    stats = result["interactions"]
    catalog = result["catalog"]
    rows = result["animelist"]
    by_reason = stats["rows_by_reason"]
    kept_rows = rows["kept"]
    lines = [
        f"Data in {result['data_dir']}",
        "",
        f"Catalog: {catalog['anime']:,} anime ({catalog['without_synopsis']:,} without synopsis, "
        f"{catalog['without_genres']:,} without genres, {catalog['without_score']:,} without score); "
        f"{catalog['never_liked']:,} never liked in animelist.csv (cold-start candidates)",
        f"Users: {stats['users']:,} in animelist.csv; {stats['users_with_eval']:,} with eval rows; "
        f"{stats['users_below_min_history']:,} below {split.min_history} liked rows (train only); "
        f"{stats['users_without_liked']:,} with no liked row",
        f"Anime in animelist.csv: {stats['anime_in_interactions']:,}; "
        f"{stats['anime_without_metadata']:,} without metadata in the catalog",
        f"Rows: {rows['rows_read']:,} read, {kept_rows:,} valid",
        f"  liked (training positives): {by_reason.get(interactions.LIKED, 0):,}",
    ]
    for reason in interactions.REASONS[1:]:
        if by_reason.get(reason):
            lines.append(f"  set aside, {reason}: {by_reason[reason]:,}")
    lines.append(f"  split: {stats['train_rows']:,} train rows, {stats['eval_rows']:,} eval rows")
    for report in result["_reports"]:
        if any(report.set_aside.values()) or any(report.repaired.values()):
            lines.extend(report.lines())
    if "rating_complete" in result:
        rc = result["rating_complete"]
        lines.append(f"rating_complete.csv: {rc['rows_read']:,} rows, {rc['users']:,} users, {rc['kept']:,} valid")
    if "watching_status" in result:
        lines.append(
            "watching_status.csv: " + ", ".join(f"{k} {v}" for k, v in sorted(result["watching_status"].items()))
        )
    return "\n".join(lines)

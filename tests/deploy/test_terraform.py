"""terraform/, checked offline (no provider plugins can be downloaded here): checkov with zero failed
checks and a written reason for every skip; the HCL parsed with python-hcl2 and the properties the
deployment promises asserted on it (SSE-KMS, versioning, no public bucket, TLS-only policies,
lifecycle, key rotation, a private encrypted TLS-only database with backups, Redis with TLS and
AUTH, least-privilege IAM with no `*` action on a `*` resource, validated and described variables);
`terraform fmt -check` and the variables' validation rules where a terraform binary exists. Each
property check is a function returning its problems, also run against a broken copy."""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.tooling import ROOT, load_hcl, run, tool

TF = ROOT / "terraform"
MODULE_FILES = sorted(TF.glob("*.tf"))
ALL_FILES = sorted(TF.rglob("*.tf"))
BUCKETS = {"inbox", "renders", "reports"}
SKIP = re.compile(r"checkov:skip=(?P<id>[A-Z0-9_]+)(?::(?P<reason>.*))?")
# Actions AWS grants on no narrower resource than "*".
NO_RESOURCE_LEVEL = {"ecr:GetAuthorizationToken"}


# -- the parsed module ---------------------------------------------------------------------------
def unquote(value: Any) -> Any:
    """python-hcl2 keeps a string literal's quotes (`"x"`); expressions stay `${...}`."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def clean(node: Any) -> Any:
    """python-hcl2's tree as plain data: quotes removed, comments as a list of strings under
    ``__comments__``, and each ``dynamic "x"`` block's content merged into the blocks ``x`` (marked
    with its ``for_each`` under ``__dynamic__``)."""
    if isinstance(node, list):
        return [clean(v) for v in node]
    if not isinstance(node, dict):
        return unquote(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "__comments__":
            out[key] = [c["value"] for c in value]
        elif key not in ("__is_block__", "dynamic"):
            out[unquote(key)] = clean(value)
    for dyn in node.get("dynamic", []):
        for name, body in dyn.items():
            for content in body.get("content", []):
                block = clean(content)
                block["__dynamic__"] = body.get("for_each")
                out.setdefault(unquote(name), []).append(block)
    return out


def model(paths: list[Path]) -> dict[str, Any]:
    """``{"resource": {(type, name): body}, "data": {...}, "variable": {name: body}, "output": ...,
    "locals": {name: value}, "comments": [...]}`` of the given files."""
    out: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "output": {}, "locals": {}, "module": {}}
    for path, doc in load_hcl(paths).items():
        doc = clean(doc)
        for kind in ("resource", "data"):
            for item in doc.get(kind, []):
                for rtype, named in item.items():
                    for name, body in named.items():
                        body["__file__"] = str(path.relative_to(ROOT))
                        out[kind][(rtype, name)] = body
        for kind in ("variable", "output", "module"):
            for item in doc.get(kind, []):
                for name, body in item.items():
                    out[kind][name] = body
        for item in doc.get("locals", []):
            out["locals"].update({k: v for k, v in item.items() if k != "__comments__"})
    return out


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return model(MODULE_FILES)


def of_type(m: dict[str, Any], rtype: str, kind: str = "resource") -> dict[str, dict[str, Any]]:
    return {name: body for (t, name), body in m[kind].items() if t == rtype}


def bucket_of(body: dict[str, Any]) -> str | None:
    """Which aws_s3_bucket a per-bucket resource configures: ``this`` (all of for_each) or another."""
    ref = str(body.get("bucket", ""))
    if ref == "${each.value.id}" and body.get("for_each") == "${aws_s3_bucket.this}":
        return "this"
    match = re.fullmatch(r"\$\{aws_s3_bucket\.(\w+)\.(id|bucket)\}", ref)
    return match.group(1) if match else None


def blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = body.get(name, [])
    return value if isinstance(value, list) else [value]


def one(body: dict[str, Any], name: str) -> dict[str, Any]:
    found = blocks(body, name)
    return found[0] if found else {}


# -- S3 ------------------------------------------------------------------------------------------
def s3_problems(m: dict[str, Any]) -> list[str]:
    """Every bucket: public access blocked (all four), no ACLs, versioning on, encryption at rest
    (SSE-KMS with the stack's key, except the access-log bucket, which AWS allows only SSE-S3 and
    whose checkov skip says so), a TLS-only bucket policy, lifecycle rules (noncurrent versions
    expire everywhere, the inbox's objects expire)."""
    problems = []
    buckets = of_type(m, "aws_s3_bucket")
    if m["locals"].get("buckets") and set(m["locals"]["buckets"]) != BUCKETS:
        problems.append(f"local.buckets is {sorted(m['locals']['buckets'])}, want {sorted(BUCKETS)}")
    if buckets.get("this", {}).get("for_each") != "${local.buckets}":
        problems.append("aws_s3_bucket.this is not one bucket per local.buckets")

    def config(rtype: str) -> dict[str, dict[str, Any]]:
        return {b: body for body in of_type(m, rtype).values() if (b := bucket_of(body))}

    pab, versioning = config("aws_s3_bucket_public_access_block"), config("aws_s3_bucket_versioning")
    sse, lifecycle = (
        config("aws_s3_bucket_server_side_encryption_configuration"),
        config("aws_s3_bucket_lifecycle_configuration"),
    )
    ownership, policy = config("aws_s3_bucket_ownership_controls"), config("aws_s3_bucket_policy")
    if of_type(m, "aws_s3_bucket_acl"):
        problems.append("a bucket ACL is set (ownership is BucketOwnerEnforced: no ACLs)")
    for name, bucket in buckets.items():
        flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
        if not all(pab.get(name, {}).get(f) is True for f in flags):
            problems.append(f"aws_s3_bucket.{name}: public access not blocked on all four settings")
        if one(ownership.get(name, {}), "rule").get("object_ownership") != "BucketOwnerEnforced":
            problems.append(f"aws_s3_bucket.{name}: ACLs not disabled (BucketOwnerEnforced)")
        if one(versioning.get(name, {}), "versioning_configuration").get("status") != "Enabled":
            problems.append(f"aws_s3_bucket.{name}: versioning not enabled")
        default = one(one(sse.get(name, {}), "rule"), "apply_server_side_encryption_by_default")
        skipped = {s.group("id") for c in bucket.get("__comments__", []) if (s := SKIP.search(c))}
        if default.get("sse_algorithm") == "aws:kms":
            if not str(default.get("kms_master_key_id", "")).startswith("${aws_kms_key."):
                problems.append(f"aws_s3_bucket.{name}: SSE-KMS without the stack's key")
        elif not (default.get("sse_algorithm") == "AES256" and name == "logs" and "CKV_AWS_145" in skipped):
            problems.append(f"aws_s3_bucket.{name}: not encrypted with SSE-KMS ({default.get('sse_algorithm')})")
        rules = blocks(lifecycle.get(name, {}), "rule")
        if not any(one(r, "noncurrent_version_expiration").get("noncurrent_days") for r in rules):
            problems.append(f"aws_s3_bucket.{name}: no lifecycle rule expiring noncurrent versions")
        if name not in policy:
            problems.append(f"aws_s3_bucket.{name}: no bucket policy")
    inbox_expiry = [
        r
        for r in blocks(lifecycle.get("this", {}), "rule")
        if one(r, "expiration").get("days") and "inbox" in str(r.get("__dynamic__", ""))
    ]
    if not inbox_expiry:
        problems.append("no lifecycle rule expires the inbox bucket's objects")
    for name, body in policy.items():
        document = policy_document(m, str(body.get("policy", "")))
        if document is None:
            problems.append(f"aws_s3_bucket.{name}: policy is not an aws_iam_policy_document of this module")
        elif not tls_only(document):
            problems.append(
                f"aws_s3_bucket.{name}: policy does not deny requests without TLS on the bucket and its objects"
            )
        elif any(is_public_allow(s) for s in blocks(document, "statement")):
            problems.append(f"aws_s3_bucket.{name}: policy allows everyone")
    return problems


def policy_document(m: dict[str, Any], ref: str) -> dict[str, Any] | None:
    match = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)(\[[^\]]*\])?\.json\}", ref)
    return m["data"].get(("aws_iam_policy_document", match.group(1))) if match else None


def tls_only(document: dict[str, Any]) -> bool:
    for s in blocks(document, "statement"):
        conditions = blocks(s, "condition")
        if (
            s.get("effect") == "Deny"
            and s.get("actions") == ["s3:*"]
            and any(
                c.get("test") == "Bool" and c.get("variable") == "aws:SecureTransport" and c.get("values") == ["false"]
                for c in conditions
            )
            and any(not r.endswith("/*") for r in s.get("resources", []))
            and any(r.endswith("/*") for r in s.get("resources", []))
            and any(p.get("identifiers") == ["*"] for p in blocks(s, "principals"))
        ):
            return True
    return False


def is_public_allow(statement: dict[str, Any]) -> bool:
    return statement.get("effect", "Allow") == "Allow" and any(
        p.get("type") in ("*", "AWS") and "*" in p.get("identifiers", []) for p in blocks(statement, "principals")
    )


def test_buckets_are_encrypted_versioned_private_tls_only_with_lifecycle(tf):
    assert set(of_type(tf, "aws_s3_bucket")) == {"this", "logs"}
    assert s3_problems(tf) == []

    broken = copy.deepcopy(tf)
    res = broken["resource"]
    one(res[("aws_s3_bucket_server_side_encryption_configuration", "this")], "rule")[
        "apply_server_side_encryption_by_default"
    ][0]["sse_algorithm"] = "AES256"
    res[("aws_s3_bucket_public_access_block", "logs")]["restrict_public_buckets"] = False
    one(res[("aws_s3_bucket_versioning", "this")], "versioning_configuration")["status"] = "Suspended"
    res[("aws_s3_bucket_lifecycle_configuration", "this")]["rule"] = [
        r for r in res[("aws_s3_bucket_lifecycle_configuration", "this")]["rule"] if "__dynamic__" not in r
    ]
    statements = broken["data"][("aws_iam_policy_document", "tls_only")]["statement"]
    statements[:] = [s for s in statements if s.get("sid") != "DenyInsecureTransport"]
    broken["data"][("aws_iam_policy_document", "logs")]["statement"].append(
        {"effect": "Allow", "actions": ["s3:GetObject"], "principals": [{"type": "*", "identifiers": ["*"]}]}
    )
    found = "\n".join(s3_problems(broken))
    for needle in [
        "aws_s3_bucket.this: not encrypted with SSE-KMS",
        "aws_s3_bucket.logs: public access not blocked",
        "aws_s3_bucket.this: versioning not enabled",
        "no lifecycle rule expires the inbox",
        "aws_s3_bucket.this: policy does not deny requests without TLS",
        "aws_s3_bucket.logs: policy allows everyone",
    ]:
        assert needle in found


# -- KMS, RDS, Redis ----------------------------------------------------------------------------
def data_store_problems(m: dict[str, Any]) -> list[str]:
    problems = []
    keys = of_type(m, "aws_kms_key")
    if not keys:
        problems.append("no KMS key")
    for name, key in keys.items():
        if key.get("enable_key_rotation") is not True:
            problems.append(f"aws_kms_key.{name}: rotation off")
    for name, db in of_type(m, "aws_db_instance").items():
        want = {
            "storage_encrypted": True,
            "publicly_accessible": False,
            "deletion_protection": "${var.deletion_protection}",
        }
        for attr, value in want.items():
            if db.get(attr) != value:
                problems.append(f"aws_db_instance.{name}: {attr} is {db.get(attr)!r}, want {value!r}")
        if not str(db.get("kms_key_id", "")).startswith("${aws_kms_key."):
            problems.append(f"aws_db_instance.{name}: not encrypted with the stack's key")
        if not str(db.get("password", "")).startswith("${random_password."):
            problems.append(f"aws_db_instance.{name}: password is not generated")
        retention = str(db.get("backup_retention_period", ""))
        var = re.fullmatch(r"\$\{var\.(\w+)\}", retention)
        if not var or ">= 7" not in json.dumps(m["variable"].get(var.group(1), {}).get("validation", "")):
            problems.append(f"aws_db_instance.{name}: backups not kept at least 7 days ({retention})")
        ref = re.fullmatch(r"\$\{aws_db_parameter_group\.(\w+)\.name\}", str(db.get("parameter_group_name", "")))
        group = of_type(m, "aws_db_parameter_group").get(ref.group(1), {}) if ref else {}
        if not any(p.get("name") == "rds.force_ssl" and str(p.get("value")) == "1" for p in blocks(group, "parameter")):
            problems.append(f"aws_db_instance.{name}: TLS not enforced (rds.force_ssl)")
    if not of_type(m, "aws_db_instance"):
        problems.append("no RDS instance")
    if m["variable"].get("deletion_protection", {}).get("default") is not True:
        problems.append("variable deletion_protection does not default to true")
    for name, redis in of_type(m, "aws_elasticache_replication_group").items():
        for attr in ("transit_encryption_enabled", "at_rest_encryption_enabled"):
            if redis.get(attr) is not True:
                problems.append(f"aws_elasticache_replication_group.{name}: {attr} is not true")
        if not str(redis.get("auth_token", "")).startswith("${random_password."):
            problems.append(f"aws_elasticache_replication_group.{name}: no generated AUTH token")
    if not of_type(m, "aws_elasticache_replication_group"):
        problems.append("no ElastiCache replication group")
    return problems


def test_key_rotates_database_and_redis_are_encrypted_private_and_authenticated(tf):
    assert data_store_problems(tf) == []

    broken = copy.deepcopy(tf)
    res = broken["resource"]
    res[("aws_kms_key", "this")]["enable_key_rotation"] = False
    res[("aws_db_instance", "this")]["publicly_accessible"] = True
    res[("aws_db_instance", "this")]["storage_encrypted"] = False
    res[("aws_db_parameter_group", "this")]["parameter"] = []
    res[("aws_elasticache_replication_group", "this")]["transit_encryption_enabled"] = False
    del res[("aws_elasticache_replication_group", "this")]["auth_token"]
    broken["variable"]["db_backup_retention_days"]["validation"] = []
    found = "\n".join(data_store_problems(broken))
    for needle in [
        "rotation off",
        "publicly_accessible",
        "storage_encrypted",
        "rds.force_ssl",
        "transit_encryption_enabled",
        "AUTH token",
        "backups not kept",
    ]:
        assert needle in found


# -- IAM -----------------------------------------------------------------------------------------
def statements(m: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for (rtype, name), body in m["data"].items():
        if rtype == "aws_iam_policy_document":
            for s in blocks(body, "statement"):
                yield name, s


def iam_problems(m: dict[str, Any]) -> list[str]:
    """No Allow of action `*`, and no `*` resource except in the KMS key policy (where it means the
    key) or for actions that have no resource-level permissions. No inline JSON policies escape the
    check (every policy is an aws_iam_policy_document). The worker role can reach only the stack's
    buckets and key, with exact actions and no delete."""
    problems = []
    key_policies = {
        d.group(1)
        for k in of_type(m, "aws_kms_key").values()
        if (d := re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", str(k.get("policy", ""))))
    }
    for name, s in statements(m):
        if s.get("effect", "Allow") != "Allow":
            continue
        actions, resources = s.get("actions", []), s.get("resources", [])
        resources = [resources] if isinstance(resources, str) else resources
        if "*" in actions or s.get("not_actions"):
            problems.append(f"{name}/{s.get('sid')}: allows every action")
        if "*" in resources and name not in key_policies and not set(actions) <= NO_RESOURCE_LEVEL:
            problems.append(f"{name}/{s.get('sid')}: {actions} on every resource")
    for rtype in ("aws_iam_role_policy", "aws_iam_policy"):
        for name, body in of_type(m, rtype).items():
            if policy_document(m, str(body.get("policy", ""))) is None:
                problems.append(f"{rtype}.{name}: policy is not an aws_iam_policy_document (unchecked)")
    if of_type(m, "aws_iam_role_policy_attachment"):
        allowed = {"arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"}
        for name, body in of_type(m, "aws_iam_role_policy_attachment").items():
            if body.get("policy_arn") not in allowed:
                problems.append(f"aws_iam_role_policy_attachment.{name}: {body.get('policy_arn')} is not reviewed")
    worker = [s for n, s in statements(m) if n == "worker"]
    if not worker:
        problems.append("no worker policy")
    for s in worker:
        for action in s.get("actions", []):
            if "*" in action or action.startswith("s3:Delete"):
                problems.append(f"worker/{s.get('sid')}: {action}")
        resources = s.get("resources", [])
        for resource in [resources] if isinstance(resources, str) else resources:
            if not re.match(
                r"^\$\{(aws_s3_bucket\.this\[\"(inbox|renders|reports)\"\]\.arn\}/.+|aws_kms_key\.this\.arn\})$|^\$\{\[for b in aws_s3_bucket\.this : b\.arn\]\}$",
                resource,
            ):
                problems.append(
                    f"worker/{s.get('sid')}: resource {resource} is not one of the stack's buckets/prefixes or its key"
                )
    return problems


def test_iam_is_least_privilege(tf):
    assert iam_problems(tf) == []
    worker = {s["sid"]: s for n, s in statements(tf) if n == "worker"}
    assert worker["ReadInbox"]["actions"] == ["s3:GetObject"]
    assert worker["ReadWriteRenders"]["resources"] == ['${aws_s3_bucket.this["renders"].arn}/renders/*']
    assert worker["ReadWriteReports"]["resources"] == ['${aws_s3_bucket.this["reports"].arn}/campaigns/*']
    assert one(worker["UseKeyThroughS3"], "condition")["variable"] == "kms:ViaService"

    broken = copy.deepcopy(tf)
    docs = broken["data"]
    docs[("aws_iam_policy_document", "worker")]["statement"].append(
        {"sid": "Oops", "actions": ["s3:*", "s3:DeleteObject"], "resources": ["arn:aws:s3:::someone-elses-bucket/*"]}
    )
    docs[("aws_iam_policy_document", "execution")]["statement"].append(
        {"sid": "Admin", "actions": ["*"], "resources": ["*"]}
    )
    docs[("aws_iam_policy_document", "execution")]["statement"].append(
        {"sid": "AllSecrets", "actions": ["secretsmanager:GetSecretValue"], "resources": ["*"]}
    )
    broken["resource"][("aws_iam_role_policy", "inline")] = {"policy": "${jsonencode({Statement = []})}"}
    found = "\n".join(iam_problems(broken))
    for needle in [
        "worker/Oops: s3:*",
        "worker/Oops: s3:DeleteObject",
        "someone-elses-bucket",
        "execution/Admin: allows every action",
        "execution/Admin: ['*'] on every resource",
        "execution/AllSecrets",
        "aws_iam_role_policy.inline",
    ]:
        assert needle in found


# -- variables, outputs, skips -------------------------------------------------------------------
# Variables whose type already says everything (a bool, free-form tags).
UNCONSTRAINED = {"tags", "db_multi_az", "deletion_protection"}


def interface_problems(m: dict[str, Any]) -> list[str]:
    problems = []
    for name, var in m["variable"].items():
        if len(str(var.get("description", ""))) < 10:
            problems.append(f"variable {name}: no description")
        if "type" not in var:
            problems.append(f"variable {name}: no type")
        if name not in UNCONSTRAINED and not var.get("validation"):
            problems.append(f"variable {name}: no validation")
    for name, out in m["output"].items():
        if len(str(out.get("description", ""))) < 10:
            problems.append(f"output {name}: no description")
    if not m["output"]:
        problems.append("no outputs")
    return problems


def test_variables_are_validated_and_described_and_outputs_described(tf):
    assert len(tf["variable"]) >= 20 and len(tf["output"]) >= 8
    assert interface_problems(tf) == []

    broken = copy.deepcopy(tf)
    broken["variable"]["image"]["validation"] = []
    del broken["variable"]["name"]["description"]
    broken["output"]["kms_key_arn"]["description"] = ""
    assert interface_problems(broken) == [
        "variable name: no description",
        "variable image: no validation",
        "output kms_key_arn: no description",
    ]


def skip_problems(paths: list[Path]) -> list[str]:
    """Every inline checkov skip names a check and says why (a sentence, not a placeholder)."""
    problems = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "checkov:skip" in line:
                match = SKIP.search(line)
                reason = (match.group("reason") or "").strip() if match else ""
                if not match or len(reason) < 30:
                    problems.append(f"{path.name}:{n}: skip without a reason: {line.strip()}")
    return problems


def test_every_checkov_skip_is_justified(tmp_path):
    assert skip_problems(ALL_FILES) == []
    broken = tmp_path / "s3.tf"
    text = (TF / "s3.tf").read_text()
    text = re.sub(r"#checkov:skip=CKV2_AWS_62:.*", "#checkov:skip=CKV2_AWS_62:TODO", text, count=1)
    broken.write_text(
        text.replace("#checkov:skip=CKV_AWS_18:", "#checkov:skip=CKV_AWS_18", 1) + "#checkov:skip=CKV_AWS_1\n"
    )
    found = skip_problems([broken])
    assert len(found) == 3 and all("skip without a reason" in p for p in found), found


def test_the_example_environment_uses_the_module():
    example = model(sorted((TF / "examples").rglob("*.tf")))
    (module,) = example["module"].values()
    assert module["source"] == "../.."
    required = {n for n, v in model(MODULE_FILES)["variable"].items() if "default" not in v}
    assert required <= set(module), f"the example does not set {sorted(required - set(module))}"
    assert (TF / "examples" / "production" / "terraform.tfvars.example").is_file()


# -- checkov ---------------------------------------------------------------------------------------
def checkov(directory: Path, *extra: str) -> dict[str, Any]:
    out = run(
        [
            tool("checkov"),
            "-d",
            directory,
            "--framework",
            "terraform",
            "--skip-download",
            "-o",
            "json",
            *extra,
        ]
    )
    assert out.stdout.strip(), out.stderr[-2000:]
    report = json.loads(out.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_finds_no_failed_check():
    report = checkov(TF)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["failed"] == 0
    assert summary["passed"] >= 200 and summary["parsing_errors"] == 0
    skipped = report["results"]["skipped_checks"]
    assert all(len(c["check_result"].get("suppress_comment", "")) >= 30 for c in skipped), skipped
    print(f"checkov: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped")


def test_checkov_fails_a_weakened_copy(tmp_path):
    copy_dir = tmp_path / "terraform"
    shutil.copytree(TF, copy_dir, ignore=shutil.ignore_patterns("examples", ".terraform*"))
    kms = copy_dir / "kms.tf"
    kms.write_text(kms.read_text().replace("enable_key_rotation     = true", "enable_key_rotation     = false"))
    db = copy_dir / "database.tf"
    db.write_text(db.read_text().replace("storage_encrypted     = true", "storage_encrypted     = false"))
    report = checkov(copy_dir, "--check", "CKV_AWS_7,CKV_AWS_16")
    failed = {(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]}
    assert failed == {("CKV_AWS_7", "aws_kms_key.this"), ("CKV_AWS_16", "aws_db_instance.this")}


# -- terraform itself, where the binary exists ----------------------------------------------------
TERRAFORM = shutil.which("terraform")
needs_terraform = pytest.mark.skipif(
    TERRAFORM is None,
    reason="no terraform binary on this machine (README: how to run fmt/validate/plan where providers can be downloaded)",
)


@needs_terraform
def test_terraform_fmt_check():
    out = run([TERRAFORM, "fmt", "-check", "-recursive", "-diff", TF])
    assert out.returncode == 0, out.stdout + out.stderr


@needs_terraform
def test_variable_validation_rejects_bad_values(tmp_path):
    """The module's variables alone (no provider to download): good values plan, bad ones are refused
    with the variable's own message."""
    shutil.copy(TF / "variables.tf", tmp_path / "variables.tf")
    good = {
        "name": "atelier-prod",
        "vpc_id": "vpc-0123456789abcdef0",
        "private_subnet_ids": ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
        "allowed_cidr_blocks": ["10.20.0.0/16"],
        "api_domain_name": "airflow.atelier.example.com",
        "certificate_arn": "arn:aws:acm:eu-west-1:123456789012:certificate/0000",
        "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/atelier-airflow:0.1.0",
    }
    env = {"TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}

    def plan(values: dict[str, Any]) -> tuple[int, str]:
        (tmp_path / "terraform.tfvars.json").write_text(json.dumps(values))
        out = run([TERRAFORM, "plan", "-input=false", "-no-color", "-lock=false"], cwd=tmp_path, env=env)
        return out.returncode, out.stdout + out.stderr

    init = run([TERRAFORM, "init", "-input=false", "-no-color", "-backend=false"], cwd=tmp_path, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    code, output = plan(good)
    assert code == 0, output
    bad = {
        "image": "atelier-airflow:latest",
        "allowed_cidr_blocks": ["0.0.0.0/0"],
        "private_subnet_ids": ["subnet-0123456789abcdef0"],
        "name": "Atelier_Prod",
        "celery_workers": 0,
        "db_backup_retention_days": 1,
    }
    # Terraform reports every failed validation of one plan.
    code, output = plan({**good, **bad})
    assert code != 0
    assert [key for key in bad if f"{key}:" not in output] == [], output[-3000:]


# -- the ECS services mirror the compose stack -----------------------------------------------------
# Compose settings the ECS services do without, and why.
COMPOSE_ONLY = {
    "AWS_ACCESS_KEY_ID": "tasks use their IAM role, not keys",
    "AWS_SECRET_ACCESS_KEY": "tasks use their IAM role, not keys",
    "AIRFLOW_HOME": "the image's default",
    "AIRFLOW__CORE__DAGS_FOLDER": "the image's default",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "the image's default",
    "ATELIER_STATSD_HOST": "no statsd exporter in the module (README: not covered)",
    "ATELIER_STATSD_PORT": "as ATELIER_STATSD_HOST",
    "AIRFLOW__METRICS__STATSD_HOST": "as ATELIER_STATSD_HOST (statsd_on is False)",
    "AIRFLOW__METRICS__STATSD_PORT": "as ATELIER_STATSD_HOST",
    "AIRFLOW__METRICS__STATSD_PREFIX": "as ATELIER_STATSD_HOST",
    "ATELIER_PROVIDER_REFSERVICE_URL": "the reference service is a local test double; remote providers come from provider_urls",
    "ATELIER_PROVIDER_REFSERVICE_DEFERRED_URL": "as ATELIER_PROVIDER_REFSERVICE_URL",
    "ATELIER_REFSERVICE_ADMIN_TOKEN": "as ATELIER_PROVIDER_REFSERVICE_URL",
}


def ecs_settings(ecs_tf: str, secrets_tf: str) -> set[str]:
    """The setting names the ECS task definitions set: the plain ones (local.environment in
    ecs.tf) and the secret ones (local.secret_settings in secrets.tf)."""

    def block(text: str, start: str) -> str:
        body = text[text.index(start) :]
        depth, end = 0, 0
        for i, ch in enumerate(body):
            depth += ch in "({"
            depth -= ch in ")}"
            if depth == 0 and ch in ")}":
                end = i
                break
        return body[:end]

    names = re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+=", block(ecs_tf, "environment = merge("), re.M)
    names += re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+=", block(secrets_tf, "secret_settings = {"), re.M)
    return set(names)


def test_the_ecs_services_mirror_the_compose_settings():
    from tests.deploy.test_compose import COMPOSE
    from tests.deploy.tooling import load_yaml

    compose = set(load_yaml(COMPOSE)["x-airflow-common"]["environment"])
    ecs = ecs_settings((TF / "ecs.tf").read_text(), (TF / "secrets.tf").read_text())
    assert {"AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_ATELIER_S3"} <= ecs
    assert sorted(compose - ecs - COMPOSE_ONLY.keys()) == []
    assert sorted(COMPOSE_ONLY.keys() - compose) == [], "COMPOSE_ONLY names a setting compose no longer has"
    assert sorted(COMPOSE_ONLY.keys() & ecs) == [], "COMPOSE_ONLY names a setting ECS sets"

    weakened = (TF / "ecs.tf").read_text().replace("AIRFLOW__CORE__MAX_MAP_LENGTH", "# gone", 1)
    assert "AIRFLOW__CORE__MAX_MAP_LENGTH" in compose - ecs_settings(weakened, (TF / "secrets.tf").read_text())

"""terraform/, parsed with python-hcl2: declarations, network exposure, the gen2
function's settings, and the etcd VM's templates."""

from __future__ import annotations

import re
import subprocess

import pytest

from deploy_support import (
    TEMPLATES,
    load_terraform,
    render_startup_script,
    render_template,
    resolve_template_values,
    strip_hcl_comments,
    template_names,
    terraform_text,
)

TF = load_terraform()
RESOURCES = TF["resource"]


def only(rtype: str) -> dict:
    named = RESOURCES.get(rtype, {})
    assert len(named) == 1, f"expected one {rtype}, found {sorted(named)}"
    return next(iter(named.values()))


def block(attrs: dict, name: str) -> dict:
    blocks = attrs.get(name)
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected one {name} block"
    return blocks[0]


def all_blocks(node):
    """Every dict nested anywhere in node (blocks, maps)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from all_blocks(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_blocks(value)


# --- declarations -----------------------------------------------------------------------


def test_layout_follows_the_google_module_convention():
    names = {p.name for p in (TEMPLATES.parent).glob("*.tf")}
    assert {"versions.tf", "variables.tf", "outputs.tf", "network.tf", "etcd_vm.tf",
            "function.tf", "secrets.tf", "apis.tf"} <= names


def test_provider_versions_are_constrained():
    (terraform,) = TF["terraform"]
    (providers,) = terraform["required_providers"]
    for name in ("google", "tls", "random", "archive"):
        assert providers[name]["source"] == f"hashicorp/{name}"
        assert re.search(r"[<~]", providers[name]["version"]), f"{name} has no upper bound"
    assert terraform["required_version"].startswith(">=")


def test_every_referenced_variable_is_declared_with_type_and_description():
    code = strip_hcl_comments(terraform_text())
    referenced = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", code))
    declared = TF["variable"]
    assert referenced, "no var. references found: the parser or the regex is broken"
    assert sorted(referenced - set(declared)) == [], "referenced but not declared"
    assert sorted(set(declared) - referenced) == [], "declared but never used"
    for name, attrs in declared.items():
        assert attrs.get("type"), f"variable {name} has no type"
        assert len(attrs.get("description", "")) > 10, f"variable {name} has no description"


def test_optional_variables_with_no_natural_default_default_to_null():
    for name in ("zone", "network", "subnetwork", "etcd_private_ip", "source_dir",
                 "config_initial_wait_seconds", "config_staleness_seconds"):
        assert "default" in TF["variable"][name] and TF["variable"][name]["default"] is None, name
    assert "default" not in TF["variable"]["project_id"], "project_id must be required"


def test_every_output_is_described():
    assert TF["output"], "no outputs"
    for name, attrs in TF["output"].items():
        assert len(attrs.get("description", "")) > 10, f"output {name} has no description"
        assert "value" in attrs


def test_outputs_give_url_address_and_iap_commands():
    outputs = TF["output"]
    assert "cloudfunctions2_function.gateway.url" in outputs["function_url"]["value"]
    assert "google_compute_address.etcd[0].address" in outputs["etcd_private_ip"]["value"]
    assert "google_storage_bucket.etcd_backups.name" in outputs["etcd_backup_bucket"]["value"]
    command = outputs["etcdctl_command"]["value"]
    assert "gcloud compute ssh" in command and "--tunnel-through-iap" in command
    assert "etcdctl" in command


def test_enables_the_apis_it_uses():
    apis = set(TF["locals"]["required_apis"])
    assert {"cloudfunctions.googleapis.com", "run.googleapis.com", "cloudbuild.googleapis.com",
            "compute.googleapis.com", "vpcaccess.googleapis.com", "secretmanager.googleapis.com",
            "iap.googleapis.com", "artifactregistry.googleapis.com"} <= apis
    service = only("google_project_service")
    assert service["disable_on_destroy"] is False


# --- who can reach etcd ---------------------------------------------------------------------


def test_etcd_vm_has_no_external_address_and_is_shielded():
    vm = RESOURCES["google_compute_instance"]["etcd"]  # the processor VM: test_deploy_processor.py
    for nic in vm["network_interface"]:
        assert "access_config" not in nic
        assert "ipv6_access_config" not in nic
    assert not any("access_config" in b for b in all_blocks(vm)), "access_config somewhere in the VM"
    shielded = block(vm, "shielded_instance_config")
    assert shielded == {"enable_secure_boot": True, "enable_vtpm": True,
                        "enable_integrity_monitoring": True}
    assert vm["metadata"]["enable-oslogin"] == "TRUE"


def test_etcd_data_lives_on_a_separate_persistent_disk():
    vm = RESOURCES["google_compute_instance"]["etcd"]  # the processor VM: test_deploy_processor.py
    disk = block(vm, "attached_disk")
    assert disk["source"] == "${google_compute_disk.etcd_data[count.index].id}"
    assert disk["device_name"] == "${local.etcd_data_device_name}"
    data = only("google_compute_disk")
    # One disk per member, in that member's zone.
    assert vm["count"] == data["count"] == "${var.etcd_cluster_size}"
    assert vm["zone"] == data["zone"] == "${local.etcd_zones[count.index]}"


def firewall_rules():
    return RESOURCES["google_compute_firewall"].items()


def allowed_ports(rule) -> set[str]:
    return {port for allow in rule["allow"] for port in allow.get("ports", [])}


def test_no_firewall_rule_is_open_to_the_internet():
    for name, rule in firewall_rules():
        assert "0.0.0.0/0" not in rule.get("source_ranges", []), name
        assert rule.get("source_ranges") or rule.get("source_service_accounts"), name


def test_etcd_port_admits_only_the_function_egress_range():
    rules = [rule for _, rule in firewall_rules() if "2379" in allowed_ports(rule)]
    by_range = [rule for rule in rules if rule.get("source_ranges")]
    assert len(by_range) == 1
    (rule,) = by_range
    # The other rule admits the etcd members to each other, and nothing else.
    for peer in (r for r in rules if r is not rule):
        assert peer["source_service_accounts"] == ["${google_service_account.etcd.email}"]
        assert peer["target_service_accounts"] == ["${google_service_account.etcd.email}"]
        assert "source_ranges" not in peer
    assert rule["source_ranges"] == ["${var.connector_cidr}"]
    connector = only("google_vpc_access_connector")
    assert connector["ip_cidr_range"] == "${var.connector_cidr}"
    assert TF["variable"]["connector_cidr"]["default"].endswith("/28")
    assert rule["target_service_accounts"] == ["${google_service_account.etcd.email}"]


def test_ssh_only_from_iap():
    rules = [rule for _, rule in firewall_rules() if "22" in allowed_ports(rule)]
    assert rules, "no SSH rule: operators could not reach etcdctl"
    for rule in rules:
        assert rule["source_ranges"] == ["35.235.240.0/20"]
        assert allowed_ports(rule) == {"22"}


def test_function_reads_only_its_own_secrets():
    function_secrets = set(TF["locals"]["function_secrets"])
    assert function_secrets == {"ca-cert", "gateway-cert", "gateway-key", "gateway-password"}
    binding = RESOURCES["google_secret_manager_secret_iam_member"]["function"]
    assert binding["member"] == "serviceAccount:${google_service_account.function.email}"
    assert binding["role"] == "roles/secretmanager.secretAccessor"


# --- the function ---------------------------------------------------------------------------

FUNCTION = only("google_cloudfunctions2_function")
SERVICE = block(FUNCTION, "service_config")
BUILD = block(FUNCTION, "build_config")


def test_function_is_gen2_http_with_the_api_gateway_entry_point():
    assert "google_cloudfunctions_function" not in RESOURCES, "a 1st-gen function"
    assert BUILD["entry_point"] == "api_gateway"
    assert BUILD["runtime"] == "${var.runtime}"
    assert TF["variable"]["runtime"]["default"] == "python312"
    assert "event_trigger" not in FUNCTION, "HTTP functions have no event trigger"


def test_function_source_object_is_named_by_its_hash():
    obj = only("google_storage_bucket_object")
    assert re.search(r"\$\{data\.archive_file\.source\.output_(sha256|md5|sha)\}", obj["name"])
    storage = block(block(BUILD, "source"), "storage_source")
    assert storage["object"] == "${google_storage_bucket_object.source.name}"


def test_function_source_is_the_same_file_set_as_gcloudignore():
    files = TF["locals"]["source_files"]
    for needed in ('"main.py"', '"requirements.txt"', '"config_watch/**"', '"gateway/**"'):
        assert needed in files
    assert "__pycache__" in files


def test_function_scaling_and_egress_defaults():
    assert SERVICE["min_instance_count"] == "${var.min_instances}"
    assert TF["variable"]["min_instances"]["default"] == 1
    assert SERVICE["max_instance_request_concurrency"] == "${var.concurrency}"
    assert TF["variable"]["concurrency"]["default"] > 1
    assert float(TF["variable"]["function_cpu"]["default"]) >= 1
    assert SERVICE["vpc_connector"] == "${google_vpc_access_connector.config.id}"
    assert SERVICE["vpc_connector_egress_settings"] == "${var.egress_settings}"
    assert TF["variable"]["egress_settings"]["default"] == "PRIVATE_RANGES_ONLY"
    assert SERVICE["service_account_email"] == "${google_service_account.function.email}"


def test_function_gets_the_settings_the_code_reads():
    env = dict(TF["locals"]["function_env"])
    env.update(TF["locals"]["function_optional_env"])
    assert {"ETCD_ENDPOINTS", "ETCD_CACERT", "ETCD_CERT", "ETCD_KEY", "ETCD_USERNAME",
            "TRUSTED_PROXY_HOPS", "CONFIG_SERVICE", "CONFIG_INITIAL_WAIT_SECONDS",
            "CONFIG_STALENESS_SECONDS", "LOG_LEVEL"} <= set(env)
    assert env["TRUSTED_PROXY_HOPS"] == "1"
    assert env["CONFIG_SERVICE"] == "api-gateway"
    assert env["ETCD_ENDPOINTS"] == "${local.etcd_client_urls}"
    client_urls = TF["locals"]["etcd_client_urls"]
    assert "local.etcd_member_ips" in client_urls and ":2379" in client_urls
    assert TF["locals"]["etcd_member_ips"] == "${google_compute_address.etcd[*].address}"
    assert "local.function_env" in SERVICE["environment_variables"]
    assert "local.function_optional_env" in SERVICE["environment_variables"]


def test_etcd_password_is_a_secret_never_a_plain_variable():
    env = {**TF["locals"]["function_env"], **TF["locals"]["function_optional_env"]}
    assert not any("PASSWORD" in name for name in env)
    (secret_env,) = [s for s in SERVICE["secret_environment_variables"] if s["key"] == "ETCD_PASSWORD"]
    assert secret_env["secret"] == '${google_secret_manager_secret.etcd["gateway-password"].secret_id}'


def test_tls_files_are_secret_volumes_in_separate_directories_matching_the_env_paths():
    env = TF["locals"]["function_env"]
    volumes = SERVICE["secret_volumes"]
    mounted = {}
    for volume in volumes:
        (version,) = volume["versions"]
        mounted[f"{volume['mount_path']}/{version['path']}"] = volume["secret"]
    assert len({v["mount_path"] for v in volumes}) == len(volumes) == 3
    expected = {"ETCD_CACERT": "ca-cert", "ETCD_CERT": "gateway-cert", "ETCD_KEY": "gateway-key"}
    for name, secret in expected.items():
        assert mounted[env[name]] == f'${{google_secret_manager_secret.etcd["{secret}"].secret_id}}'


def test_function_is_private_unless_asked():
    assert TF["variable"]["allow_unauthenticated"]["default"] is False
    invoker = RESOURCES["google_cloud_run_service_iam_member"]["invoker"]
    assert invoker["role"] == "roles/run.invoker"
    assert 'var.allow_unauthenticated ? ["allUsers"] : []' in invoker["for_each"]


def test_cpu_always_allocated_is_an_opt_in_run_service_setting():
    assert TF["variable"]["cpu_always_allocated"]["default"] is False
    step = RESOURCES["terraform_data"]["cpu_always_allocated"]
    assert step["count"] == "${var.cpu_always_allocated ? 1 : 0}"
    command = step["provisioner"][0]["local-exec"]["command"]
    assert "--no-cpu-throttling" in command and "gcloud run services update" in command
    conditions = " ".join(p["condition"] for p in block(FUNCTION, "lifecycle")["precondition"])
    assert "var.function_cpu" in conditions and "var.cpu_always_allocated" in conditions


# --- the etcd VM's templates ------------------------------------------------------------------


def test_etcd_release_is_pinned_with_a_checksum():
    version = TF["variable"]["etcd_version"]["default"]
    assert re.fullmatch(r"v3\.[56]\.\d+", version)
    assert re.fullmatch(r"[0-9a-f]{64}", TF["variable"]["etcd_sha256"]["default"])


@pytest.mark.parametrize(
    "template, local_name",
    [("etcd-startup.sh.tftpl", "etcd_startup_vars"), ("etcd.flags.tftpl", "etcd_flags_vars")],
)
def test_template_values_match_the_names_the_template_uses(template, local_name):
    used = template_names((TEMPLATES / template).read_text())
    given = set(TF["locals"][local_name])
    if local_name == "etcd_startup_vars":  # merged with each member's own values
        given |= set(re.findall(r"[{,]\s*(\w+)\s*=", TF["locals"]["etcd_member_vars"]))
    assert used == given, f"used but not given: {used - given}; given but unused: {given - used}"


def test_renderer_rejects_what_it_cannot_render_faithfully():
    from deploy_support import TemplateError

    assert render_template("a $${b} %%{c} ${d}", {"d": "D"}) == "a ${b} %{c} D"
    for bad in ("${a.b}", "%{ if x }y%{ endif }", "${missing}"):
        with pytest.raises(TemplateError):
            render_template(bad, {"a": 1})


def test_startup_script_verifies_checksum_and_runs_etcd_with_tls_and_auth():
    script = render_startup_script()
    assert re.search(r'sha256sum --check --strict', script)
    assert "etcd-${ETCD_VERSION#v}" not in script  # the escape rendered as bash, not left raw
    assert 'ETCD_VERSION="' + TF["variable"]["etcd_version"]["default"] + '"' in script
    assert "https://github.com/etcd-io/etcd/releases/download/$ETCD_VERSION/" in script
    assert "--client-cert-auth=true" in script
    assert "--peer-client-cert-auth=true" in script
    assert "--auto-compaction-mode=periodic" in script
    assert "ExecStart=/usr/local/lib/etcd-run" in script
    assert "/usr/local/lib/etcd-bootstrap" in script
    assert 'DATA_DIR="$DATA_MOUNT/data"' in script and "DATA_MOUNT=/var/lib/etcd" in script
    assert "/usr/local/lib/etcd-node-flags >/etc/etcd/node.flags.new" in script


def test_startup_script_fetches_only_secrets_terraform_creates_and_grants_the_vm():
    script = (TEMPLATES / "etcd-startup.sh.tftpl").read_text()
    used = set(re.findall(r"(?:fetch_secret|secret) ([a-z-]+)", script))
    used.discard("versions")  # `gcloud secrets versions access`
    assert used, "the startup script fetches no secrets?"
    granted = set(TF["locals"]["etcd_vm_secrets"])
    assert sorted(used - granted) == []
    assert "gateway-key" not in granted, "the VM has no business with the gateway's key"
    assert sorted(granted - created_secrets()) == []
    assert sorted(set(TF["locals"]["function_secrets"]) - created_secrets()) == []


def created_secrets() -> set[str]:
    """Secret suffixes in local.etcd_secret_values: the literal keys plus the
    "${client}-cert" / "${client}-key" entries made for every etcd client."""
    expr = TF["locals"]["etcd_secret_values"]
    names = set(re.findall(r'"([a-z-]+)" =', expr))
    for pattern in re.findall(r'"\$\{client\}(-[a-z]+)"', expr):
        names |= {client + pattern for client in TF["locals"]["etcd_clients"]}
    assert {"ca-cert", "root-cert", "gateway-key"} <= names, names
    return names


def test_startup_values_resolve():
    values = resolve_template_values("etcd_startup_vars")
    assert values["pki_dir"] == "/etc/etcd/pki"
    assert values["bootstrap_script"].startswith("#!/usr/bin/env bash")
    assert "--trusted-ca-file=/etc/etcd/pki/ca.pem" in values["etcd_flags"]


# --- the etcd cluster option ---------------------------------------------------------------


def test_cluster_size_is_one_or_three():
    size = TF["variable"]["etcd_cluster_size"]
    assert size["default"] == 1
    (validation,) = size["validation"]
    assert validation["condition"] == "${contains([1, 3], var.etcd_cluster_size)}"
    for rtype, name in (("google_compute_instance", "etcd"), ("google_compute_disk", "etcd_data"),
                        ("google_compute_address", "etcd")):
        assert RESOURCES[rtype][name]["count"] == "${var.etcd_cluster_size}", rtype


def test_members_spread_over_zones_and_the_single_vm_keeps_its_name_and_state():
    zones = TF["locals"]["etcd_zones"]
    assert zones.startswith("${var.etcd_cluster_size == 1 ? [local.zone]")
    assert "data.google_compute_zones.available" in zones
    assert "precondition" in str(RESOURCES["google_compute_instance"]["etcd"]["lifecycle"])
    names = TF["locals"]["etcd_member_names"]
    assert "[var.etcd_instance_name]" in names and '"${var.etcd_instance_name}-${i}"' in names
    moved = {(m["from"], m["to"]) for m in TF.get("moved", [])}
    for resource in ("google_compute_address.etcd", "google_compute_disk.etcd_data",
                     "google_compute_instance.etcd"):
        assert (f"${{{resource}}}", f"${{{resource}[0]}}") in moved, resource


def test_static_initial_cluster_names_every_member_on_its_peer_tls_url():
    initial = TF["locals"]["etcd_initial_cluster"]
    assert "local.etcd_member_names" in initial and 'https://${local.etcd_member_ips[i]}:2380' in initial
    startup = TF["locals"]["etcd_startup_vars"]
    assert startup["initial_cluster"] == "${local.etcd_initial_cluster}"
    # Only member 0 creates the users and roles.
    assert 'bootstrap_member = i == 0 ? "true" : "false"' in TF["locals"]["etcd_member_vars"]


def test_server_certificate_names_every_member():
    request = RESOURCES["tls_cert_request"]["server"]
    assert "local.etcd_member_ips" in request["ip_addresses"]
    assert "local.etcd_member_names" in request["dns_names"]
    assert "server_auth" in RESOURCES["tls_locally_signed_cert"]["server"]["allowed_uses"]
    assert "client_auth" in RESOURCES["tls_locally_signed_cert"]["server"]["allowed_uses"]


def test_peer_port_is_open_only_between_etcd_members():
    rules = [rule for _, rule in firewall_rules() if "2380" in allowed_ports(rule)]
    assert len(rules) == 1
    (rule,) = rules
    assert rule["source_service_accounts"] == ["${google_service_account.etcd.email}"]
    assert rule["target_service_accounts"] == ["${google_service_account.etcd.email}"]


def test_operators_reach_every_member():
    grants = TF["locals"]["etcd_operator_grants"]
    assert "setproduct(var.operator_members, range(var.etcd_cluster_size))" in grants
    for rtype in ("google_iap_tunnel_instance_iam_member", "google_compute_instance_iam_member"):
        assert RESOURCES[rtype]["operators"]["for_each"] == "${local.etcd_operator_grants}"

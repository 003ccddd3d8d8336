from optionfeed_operator.handlers import in_cluster_server

KOPF_DEFAULT = "https://kubernetes.default.svc"


def test_the_in_cluster_server_comes_from_the_kubelets_environment() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_server(env, KOPF_DEFAULT) == "https://10.96.0.1:443"


def test_an_ipv6_service_host_is_bracketed_and_the_port_defaults_to_443() -> None:
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00::1"}, KOPF_DEFAULT) == (
        "https://[fd00::1]:443"
    )


def test_without_the_environment_kopfs_default_stays() -> None:
    assert in_cluster_server({}, KOPF_DEFAULT) == KOPF_DEFAULT

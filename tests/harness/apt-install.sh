# Sourced by the ensure-*.sh scripts. `apt_install PACKAGE...` installs Debian packages quietly,
# without recommended ones, through sudo when not run as root. SUDO is left set for the caller's
# own follow-up commands (stopping a service a package started).
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

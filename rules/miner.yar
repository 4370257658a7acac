// Quarry's built-in content signatures (YARA syntax), matched against the
// executable of every process with a signal or at least 50% of one CPU
// (through /proc/PID/exe) and against its private memory (/proc/PID/mem).
//
// Each rule's meta says how much a match weighs in the miner score
// (docs/DETECTION.md: 5 is "malicious", 3-4 "suspicious"), which ATT&CK
// technique it shows, and where the strings come from. Nothing here may match
// ordinary developer work: the strong rules need things only a running miner
// holds (a live job with a hash blob, a login carrying a wallet), and the
// strings that mining *source code* also contains (method names, algorithm
// names) are weaker and need several together.
//
// Users add their own rules with `quarry scan --yara FILE|DIR`; a rule
// without `weight` weighs 3 (suspicious alone, malicious with any other
// signal).

rule quarry_stratum_job {
    meta:
        weight = 5
        technique = "T1496"
        description = "a Monero-style stratum job received from a pool: a job id with a hashing blob of at least 76 hex digits"
        source = "Stratum (Monero) job objects: XMRig src/base/net/stratum/Client.cpp parseJob; cpuminer-multi stratum.c"
    strings:
        $blob = /"blob"\s*:\s*"[0-9a-f]{76,}"/
        $job = /"job_id"\s*:\s*"[^"]{1,64}"/
    condition:
        $blob and $job
}

rule quarry_stratum_login {
    meta:
        weight = 5
        technique = "T1496"
        description = "a stratum login request carrying a Monero wallet address"
        source = "Stratum (Monero) login: {\"method\":\"login\",\"params\":{\"login\":WALLET,...}}; wallet format: Monero standard (95) and integrated (106) base58 addresses"
    strings:
        $login = /"method"\s*:\s*"login"\s*,\s*"params"\s*:\s*\{[^}]{0,64}"login"\s*:\s*"[48][1-9A-HJ-NP-Za-km-z]{94}/
    condition:
        $login
}

rule quarry_stratum_protocol {
    meta:
        weight = 3
        technique = "T1496"
        description = "stratum pool-protocol method names (three or more)"
        source = "Stratum v1 (Bitcoin): mining.subscribe/authorize/notify/submit; Monero stratum: login/getjob/submit/keepalived (shared/ioc-notes.md)"
    strings:
        $a = "mining.subscribe"
        $b = "mining.authorize"
        $c = "mining.submit"
        $d = "mining.notify"
        $e = "mining.set_difficulty"
        $f = "\"method\":\"keepalived\""
        $g = "\"method\":\"submit\""
        $h = "\"method\":\"login\""
        $i = "\"seed_hash\""
    condition:
        3 of them
}

rule quarry_miner_identity {
    meta:
        weight = 3
        technique = "T1496"
        description = "a known miner's own identity: user agent or donation endpoint"
        source = "XMRig user agent and donation servers (xmrig.com docs, src/donate.h); xmr-stak and cpuminer-multi user agents"
    strings:
        $xmrig_ua = /XMRig\/[0-9]+\.[0-9]+\.[0-9]+ \(/
        $xmrig_donate = "donate.v2.xmrig.com"
        $xmrig_donate_ssl = "donate.ssl.xmrig.com"
        $xmrstak = /xmr-stak\/[0-9]+\.[0-9]+/
        $cpuminer = /cpuminer(-multi|-opt)?\/[0-9]+\.[0-9]+/
        $minerd_ua = "User-Agent: cpuminer"
    condition:
        any of them
}

rule quarry_algorithm_table {
    meta:
        weight = 2
        technique = "T1496"
        description = "a mining algorithm table (five or more algorithm identifiers)"
        source = "XMRig algorithm names (xmrig.com/docs/algorithms); cpuminer-multi algorithm list"
    strings:
        $a1 = "rx/0" fullword
        $a2 = "rx/wow" fullword
        $a3 = "rx/arq" fullword
        $a4 = "cn/r" fullword
        $a5 = "cn/half" fullword
        $a6 = "cn-heavy/0" fullword
        $a7 = "cn-lite/1" fullword
        $a8 = "argon2/chukwa" fullword
        $a9 = "cn-pico" fullword
        $a10 = "ghostrider" fullword
        $a11 = "kawpow" fullword
        $a12 = "cryptonight-lite" fullword
        $a13 = "yespower" fullword
        $a14 = "scryptjane" fullword
    condition:
        5 of them
}

rule quarry_upx_packed {
    meta:
        weight = 1
        technique = "T1027.002"
        description = "packed with UPX (weak: packers have honest uses)"
        source = "UPX file format: 'UPX!' pack header magic and the l_info block (upx/src/stub)"
        scope = "file"
    strings:
        $magic = "UPX!"
        $info = "$Info: This file is packed with the UPX executable packer"
    condition:
        uint32(0) == 0x464c457f and ($info or #magic >= 2)
}

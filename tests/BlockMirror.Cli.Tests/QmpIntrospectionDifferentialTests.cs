using System.Text.Json.Nodes;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// query-qmp-schema, query-block and query-block-exports on qemu-storage-daemon 7.2 and on <c>blockmirror
/// serve</c>: the commands both have declare the same members (names, optionality, kinds, at every depth),
/// and where they do not the difference is pinned here and said in README.md.
/// </summary>
public sealed class QmpIntrospectionDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-introspection-test-");

    public void Dispose() => _dir.Dispose();

    /// <summary>qemu-storage-daemon 7.2's commands that BlockMirror does not have (a helper that adds one removes it here).</summary>
    static readonly string[] TheirsOnly =
    [
        "block-stream",
        "blockdev-backup", "blockdev-reopen", "blockdev-snapshot", "blockdev-snapshot-delete-internal-sync",
        "blockdev-snapshot-internal-sync", "blockdev-snapshot-sync", "change-backing-file", "chardev-add", "chardev-change",
        "chardev-remove", "chardev-send-break", "drive-backup", "nbd-server-add", "nbd-server-remove", "qom-get", "qom-list",
        "qom-list-properties", "qom-list-types", "qom-set", "query-chardev", "query-chardev-backends",
        "ringbuf-read", "ringbuf-write", "x-blockdev-amend", "x-blockdev-change", "x-blockdev-set-iothread",
        "x-debug-block-dirty-bitmap-sha256", "x-debug-query-block-graph",
    ];

    /// <summary>Ours only: block-job-change is QEMU 8.2's.</summary>
    static readonly string[] OursOnly = ["block-job-change"];

    /// <summary>
    /// Per command, what differs: the union variants qemu-storage-daemon declares and ours does not (types
    /// ours refuses by name or does not know: drivers, object types, export types), and the signature lines
    /// (<see cref="SchemaInfoView.Signature"/>) of the variants both have that differ, "+" ours only, "-" theirs only.
    /// </summary>
    /// <summary>Proxmox's sync=bitmap arguments on blockdev-mirror and drive-mirror, which QEMU 7.2 lacks.</summary>
    static readonly string[] BitmapSyncMembers =
        ["+bitmap-mode = always", "+bitmap-mode = never", "+bitmap-mode = on-success", "+bitmap-mode?: enum", "+bitmap?: str"];

    static readonly Dictionary<string, (string[] MissingVariants, string[] Members)> Differences = new(StringComparer.Ordinal)
    {
        // Export types other than nbd are refused by name.
        ["block-export-add"] = (
            [
                "{type=fuse}", "{type=vduse-blk}", "{type=vhost-user-blk}",
            ],
            [
            ]),
        // The drivers ours does not have (and qcow2's encrypt); nbd's two members are ours (README), as are discard's
        // older spellings off and on; the members QEMU has and ours lacks are refused as unexpected.
        ["blockdev-add"] = (
            [
                "{driver=blklogwrites}", "{driver=blkreplay}", "{driver=blkverify}", "{driver=bochs}",
                "{driver=cloop}", "{driver=compress}", "{driver=copy-before-write}", "{driver=copy-on-read}",
                "{driver=dmg}", "{driver=ftps}", "{driver=ftp}", "{driver=gluster}", "{driver=host_cdrom}",
                "{driver=host_device}", "{driver=https}", "{driver=http}", "{driver=iscsi}", "{driver=luks}",
                "{driver=nfs}", "{driver=null-aio}", "{driver=nvme}", "{driver=parallels}", "{driver=preallocate}",
                "{driver=qcow2}encrypt.{format=aes}", "{driver=qcow2}encrypt.{format=luks}", "{driver=qcow}",
                "{driver=qed}", "{driver=quorum}", "{driver=rbd}", "{driver=replication}", "{driver=snapshot-access}",
                "{driver=ssh}", "{driver=throttle}", "{driver=vdi}", "{driver=vhdx}", "{driver=vmdk}", "{driver=vpc}",
                "{driver=vvfat}",
            ],
            [
                "+discard = off", "+discard = on", "+{driver=nbd}multi-conn?: int",
                "+{driver=nbd}tls-certificates?: str", "-{driver=blkdebug}opt-discard?: int",
                "-{driver=blkdebug}opt-write-zero?: int", "-{driver=blkdebug}take-child-perms?: [enum]",
                "-{driver=blkdebug}unshare-child-perms?: [enum]", "-{driver=file}aio-max-batch?: int",
                "-{driver=file}pr-manager?: str", "-{driver=qcow2}encrypt.format: enum",
                "-{driver=qcow2}encrypt?: object", "-{driver=qcow2}l2-cache-entry-size?: int",
            ]),
        // file and qcow2 only (README); qcow2's file and data-file references differ as blockdev-add's do; encrypt,
        // data-file's and extended-l2's siblings ours refuses are listed.
        ["blockdev-create"] = (
            [
                "options.{driver=gluster}", "options.{driver=luks}", "options.{driver=nfs}",
                "options.{driver=parallels}", "options.{driver=qcow2}data-file.{driver=blklogwrites}",
                "options.{driver=qcow2}data-file.{driver=blkreplay}",
                "options.{driver=qcow2}data-file.{driver=blkverify}", "options.{driver=qcow2}data-file.{driver=bochs}",
                "options.{driver=qcow2}data-file.{driver=cloop}", "options.{driver=qcow2}data-file.{driver=compress}",
                "options.{driver=qcow2}data-file.{driver=copy-before-write}",
                "options.{driver=qcow2}data-file.{driver=copy-on-read}",
                "options.{driver=qcow2}data-file.{driver=dmg}", "options.{driver=qcow2}data-file.{driver=ftps}",
                "options.{driver=qcow2}data-file.{driver=ftp}", "options.{driver=qcow2}data-file.{driver=gluster}",
                "options.{driver=qcow2}data-file.{driver=host_cdrom}",
                "options.{driver=qcow2}data-file.{driver=host_device}",
                "options.{driver=qcow2}data-file.{driver=https}", "options.{driver=qcow2}data-file.{driver=http}",
                "options.{driver=qcow2}data-file.{driver=iscsi}", "options.{driver=qcow2}data-file.{driver=luks}",
                "options.{driver=qcow2}data-file.{driver=nfs}", "options.{driver=qcow2}data-file.{driver=null-aio}",
                "options.{driver=qcow2}data-file.{driver=nvme}", "options.{driver=qcow2}data-file.{driver=parallels}",
                "options.{driver=qcow2}data-file.{driver=preallocate}",
                "options.{driver=qcow2}data-file.{driver=qcow2}encrypt.{format=aes}",
                "options.{driver=qcow2}data-file.{driver=qcow2}encrypt.{format=luks}",
                "options.{driver=qcow2}data-file.{driver=qcow}", "options.{driver=qcow2}data-file.{driver=qed}",
                "options.{driver=qcow2}data-file.{driver=quorum}", "options.{driver=qcow2}data-file.{driver=rbd}",
                "options.{driver=qcow2}data-file.{driver=replication}",
                "options.{driver=qcow2}data-file.{driver=snapshot-access}",
                "options.{driver=qcow2}data-file.{driver=ssh}", "options.{driver=qcow2}data-file.{driver=throttle}",
                "options.{driver=qcow2}data-file.{driver=vdi}", "options.{driver=qcow2}data-file.{driver=vhdx}",
                "options.{driver=qcow2}data-file.{driver=vmdk}", "options.{driver=qcow2}data-file.{driver=vpc}",
                "options.{driver=qcow2}data-file.{driver=vvfat}", "options.{driver=qcow2}encrypt.{format=luks}",
                "options.{driver=qcow2}encrypt.{format=qcow}", "options.{driver=qcow2}file.{driver=blklogwrites}",
                "options.{driver=qcow2}file.{driver=blkreplay}", "options.{driver=qcow2}file.{driver=blkverify}",
                "options.{driver=qcow2}file.{driver=bochs}", "options.{driver=qcow2}file.{driver=cloop}",
                "options.{driver=qcow2}file.{driver=compress}",
                "options.{driver=qcow2}file.{driver=copy-before-write}",
                "options.{driver=qcow2}file.{driver=copy-on-read}", "options.{driver=qcow2}file.{driver=dmg}",
                "options.{driver=qcow2}file.{driver=ftps}", "options.{driver=qcow2}file.{driver=ftp}",
                "options.{driver=qcow2}file.{driver=gluster}", "options.{driver=qcow2}file.{driver=host_cdrom}",
                "options.{driver=qcow2}file.{driver=host_device}", "options.{driver=qcow2}file.{driver=https}",
                "options.{driver=qcow2}file.{driver=http}", "options.{driver=qcow2}file.{driver=iscsi}",
                "options.{driver=qcow2}file.{driver=luks}", "options.{driver=qcow2}file.{driver=nfs}",
                "options.{driver=qcow2}file.{driver=null-aio}", "options.{driver=qcow2}file.{driver=nvme}",
                "options.{driver=qcow2}file.{driver=parallels}", "options.{driver=qcow2}file.{driver=preallocate}",
                "options.{driver=qcow2}file.{driver=qcow2}encrypt.{format=aes}",
                "options.{driver=qcow2}file.{driver=qcow2}encrypt.{format=luks}",
                "options.{driver=qcow2}file.{driver=qcow}", "options.{driver=qcow2}file.{driver=qed}",
                "options.{driver=qcow2}file.{driver=quorum}", "options.{driver=qcow2}file.{driver=rbd}",
                "options.{driver=qcow2}file.{driver=replication}",
                "options.{driver=qcow2}file.{driver=snapshot-access}", "options.{driver=qcow2}file.{driver=ssh}",
                "options.{driver=qcow2}file.{driver=throttle}", "options.{driver=qcow2}file.{driver=vdi}",
                "options.{driver=qcow2}file.{driver=vhdx}", "options.{driver=qcow2}file.{driver=vmdk}",
                "options.{driver=qcow2}file.{driver=vpc}", "options.{driver=qcow2}file.{driver=vvfat}",
                "options.{driver=qcow}", "options.{driver=qed}", "options.{driver=rbd}", "options.{driver=ssh}",
                "options.{driver=vdi}", "options.{driver=vhdx}", "options.{driver=vmdk}", "options.{driver=vpc}",
            ],
            [
                "+options.{driver=qcow2}data-file.discard = off", "+options.{driver=qcow2}data-file.discard = on",
                "+options.{driver=qcow2}data-file.{driver=nbd}multi-conn?: int",
                "+options.{driver=qcow2}data-file.{driver=nbd}tls-certificates?: str",
                "+options.{driver=qcow2}file.discard = off", "+options.{driver=qcow2}file.discard = on",
                "+options.{driver=qcow2}file.{driver=nbd}multi-conn?: int",
                "+options.{driver=qcow2}file.{driver=nbd}tls-certificates?: str",
                "-options.{driver=qcow2}backing-fmt = blklogwrites", "-options.{driver=qcow2}backing-fmt = blkreplay",
                "-options.{driver=qcow2}backing-fmt = blkverify", "-options.{driver=qcow2}backing-fmt = bochs",
                "-options.{driver=qcow2}backing-fmt = cloop", "-options.{driver=qcow2}backing-fmt = compress",
                "-options.{driver=qcow2}backing-fmt = copy-before-write",
                "-options.{driver=qcow2}backing-fmt = copy-on-read", "-options.{driver=qcow2}backing-fmt = dmg",
                "-options.{driver=qcow2}backing-fmt = ftp", "-options.{driver=qcow2}backing-fmt = ftps",
                "-options.{driver=qcow2}backing-fmt = gluster", "-options.{driver=qcow2}backing-fmt = host_cdrom",
                "-options.{driver=qcow2}backing-fmt = host_device", "-options.{driver=qcow2}backing-fmt = http",
                "-options.{driver=qcow2}backing-fmt = https", "-options.{driver=qcow2}backing-fmt = iscsi",
                "-options.{driver=qcow2}backing-fmt = luks", "-options.{driver=qcow2}backing-fmt = nfs",
                "-options.{driver=qcow2}backing-fmt = null-aio", "-options.{driver=qcow2}backing-fmt = nvme",
                "-options.{driver=qcow2}backing-fmt = parallels", "-options.{driver=qcow2}backing-fmt = preallocate",
                "-options.{driver=qcow2}backing-fmt = qcow", "-options.{driver=qcow2}backing-fmt = qed",
                "-options.{driver=qcow2}backing-fmt = quorum", "-options.{driver=qcow2}backing-fmt = rbd",
                "-options.{driver=qcow2}backing-fmt = replication",
                "-options.{driver=qcow2}backing-fmt = snapshot-access", "-options.{driver=qcow2}backing-fmt = ssh",
                "-options.{driver=qcow2}backing-fmt = throttle", "-options.{driver=qcow2}backing-fmt = vdi",
                "-options.{driver=qcow2}backing-fmt = vhdx", "-options.{driver=qcow2}backing-fmt = vmdk",
                "-options.{driver=qcow2}backing-fmt = vpc", "-options.{driver=qcow2}backing-fmt = vvfat",
                "-options.{driver=qcow2}data-file.{driver=blkdebug}opt-discard?: int",
                "-options.{driver=qcow2}data-file.{driver=blkdebug}opt-write-zero?: int",
                "-options.{driver=qcow2}data-file.{driver=blkdebug}take-child-perms?: [enum]",
                "-options.{driver=qcow2}data-file.{driver=blkdebug}unshare-child-perms?: [enum]",
                "-options.{driver=qcow2}data-file.{driver=file}aio-max-batch?: int",
                "-options.{driver=qcow2}data-file.{driver=file}pr-manager?: str",
                "-options.{driver=qcow2}data-file.{driver=qcow2}encrypt.format: enum",
                "-options.{driver=qcow2}data-file.{driver=qcow2}encrypt?: object",
                "-options.{driver=qcow2}data-file.{driver=qcow2}l2-cache-entry-size?: int",
                "-options.{driver=qcow2}encrypt.format: enum", "-options.{driver=qcow2}encrypt?: object",
                "-options.{driver=qcow2}file.{driver=blkdebug}opt-discard?: int",
                "-options.{driver=qcow2}file.{driver=blkdebug}opt-write-zero?: int",
                "-options.{driver=qcow2}file.{driver=blkdebug}take-child-perms?: [enum]",
                "-options.{driver=qcow2}file.{driver=blkdebug}unshare-child-perms?: [enum]",
                "-options.{driver=qcow2}file.{driver=file}aio-max-batch?: int",
                "-options.{driver=qcow2}file.{driver=file}pr-manager?: str",
                "-options.{driver=qcow2}file.{driver=qcow2}encrypt.format: enum",
                "-options.{driver=qcow2}file.{driver=qcow2}encrypt?: object",
                "-options.{driver=qcow2}file.{driver=qcow2}l2-cache-entry-size?: int",
            ]),
        // Our copy mode (README, "Copy modes"); QEMU 10.1's target-is-zero (README, "Deliberate differences"); Proxmox's
        // sync=bitmap arguments (README, "Incremental re-sync"); our write-intent log (README, "Resuming after a crash").
        ["blockdev-mirror"] = ([], ["+__org.blockmirror_resume?: bool", "+__org.blockmirror_write-intent-log?: bool", .. BitmapSyncMembers,
            "+copy-mode = __org.blockmirror_adaptive", "+target-is-zero?: bool"]),
        ["drive-mirror"] = ([], [.. BitmapSyncMembers, "+copy-mode = __org.blockmirror_adaptive", "+target-is-zero?: bool"]),
        // Object types other than the TLS credentials are refused by name.
        ["object-add"] = (
            [
                "{qom-type=authz-listfile}", "{qom-type=authz-list}", "{qom-type=authz-pam}",
                "{qom-type=authz-simple}", "{qom-type=can-host-socketcan}", "{qom-type=colo-compare}",
                "{qom-type=cryptodev-backend-builtin}", "{qom-type=cryptodev-backend-lkcf}",
                "{qom-type=cryptodev-backend}", "{qom-type=cryptodev-vhost-user}", "{qom-type=dbus-vmstate}",
                "{qom-type=filter-buffer}", "{qom-type=filter-dump}", "{qom-type=filter-mirror}",
                "{qom-type=filter-redirector}", "{qom-type=filter-replay}", "{qom-type=filter-rewriter}",
                "{qom-type=input-barrier}", "{qom-type=input-linux}", "{qom-type=iothread}", "{qom-type=main-loop}",
                "{qom-type=memory-backend-epc}", "{qom-type=memory-backend-file}", "{qom-type=memory-backend-memfd}",
                "{qom-type=memory-backend-ram}", "{qom-type=pr-manager-helper}", "{qom-type=qtest}",
                "{qom-type=rng-builtin}", "{qom-type=rng-egd}", "{qom-type=rng-random}", "{qom-type=secret_keyring}",
                "{qom-type=secret}", "{qom-type=sev-guest}", "{qom-type=thread-context}", "{qom-type=throttle-group}",
                "{qom-type=tls-cipher-suites}", "{qom-type=tls-creds-anon}", "{qom-type=x-remote-object}",
                "{qom-type=x-vfio-user-server}",
            ],
            [
            ]),
        // Snapshots and backups: refused by name before any action is prepared (README, "Dirty bitmaps").
        ["transaction"] = (
            [
                "actions.{type=blockdev-backup}", "actions.{type=blockdev-snapshot-internal-sync}", "actions.{type=blockdev-snapshot-sync}",
                "actions.{type=blockdev-snapshot}", "actions.{type=drive-backup}",
            ],
            [
            ]),
    };

    /// <summary>
    /// Splits a command's signature difference into whole variants ours lacks and single lines. A variant is a
    /// line's prefix up to a <c>{tag=value}</c>, at any depth (blockdev-create's <c>options.{driver=luks}</c>,
    /// or a driver inside its <c>file</c> reference); the shortest such prefix no line of ours has is the
    /// variant a line of theirs belongs to.
    /// </summary>
    static (string[] MissingVariants, string[] Members) Difference(SortedSet<string> ours, SortedSet<string> theirs)
    {
        var ourPrefixes = ours.SelectMany(VariantPrefixes).ToHashSet(StringComparer.Ordinal);
        string? Missing(string line) => VariantPrefixes(line).FirstOrDefault(p => !ourPrefixes.Contains(p));
        var theirsOnly = theirs.Except(ours).ToList();
        var missing = theirsOnly.Select(Missing).OfType<string>().ToHashSet(StringComparer.Ordinal);
        string[] members =
        [
            .. ours.Except(theirs).Select(l => "+" + l),
            .. theirsOnly.Where(l => Missing(l) is null).Select(l => "-" + l),
        ];
        return ([.. missing.Order(StringComparer.Ordinal)], members);
    }

    /// <summary>Every prefix of <paramref name="line"/> that ends a <c>{tag=value}</c>, shortest first.</summary>
    static IEnumerable<string> VariantPrefixes(string line)
    {
        for (var close = line.IndexOf('}', StringComparison.Ordinal); close >= 0; close = line.IndexOf('}', close + 1))
        {
            yield return line[..(close + 1)];
        }
    }

    async Task<SchemaInfoView> SchemaAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        JsonArray? schema = null;
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk"], "disk", async (qmp, _) =>
            schema = (JsonArray)(await qmp.ExecuteAsync("query-qmp-schema"))!);
        return new SchemaInfoView(schema!);
    }

    [SkippableFact]
    public async Task The_commands_both_daemons_have_declare_the_same_members_but_for_the_pinned_differences()
    {
        var theirs = await SchemaAsync(DifferentialDaemon.Qsd());
        var ours = await SchemaAsync(DifferentialDaemon.Ours());

        Assert.Equal(TheirsOnly, theirs.Commands.Except(ours.Commands));
        Assert.Equal(OursOnly, ours.Commands.Except(theirs.Commands));
        var found = new Dictionary<string, (string[] MissingVariants, string[] Members)>(StringComparer.Ordinal);
        foreach (var command in ours.Commands.Intersect(theirs.Commands))
        {
            var difference = Difference(ours.Signature(command), theirs.Signature(command));
            if (difference.MissingVariants.Length + difference.Members.Length > 0)
            {
                found[command] = difference;
            }
        }

        static string Quote(IEnumerable<string> lines) => string.Join(", ", lines.Select(l => $"\"{l}\""));
        Assert.True(found.Count == Differences.Count && found.All(f => Differences.TryGetValue(f.Key, out var pinned)
                && pinned.MissingVariants.SequenceEqual(f.Value.MissingVariants) && pinned.Members.SequenceEqual(f.Value.Members)),
            string.Join("\n", found.Select(f => $"[\"{f.Key}\"] = ([{Quote(f.Value.MissingVariants)}], [{Quote(f.Value.Members)}]),")));
    }

    /// <summary>
    /// BlockDeviceInfo's optional members ours never fills and so does not declare: throttling limits (no
    /// throttle groups) and the image details QEMU's bdrv_query_image_info
    /// adds (README, "Introspection").
    /// </summary>
    static readonly string[] NodeInfoNotFilled =
    [
        "-bps_max?: int", "-bps_max_length?: int", "-bps_rd_max?: int", "-bps_rd_max_length?: int", "-bps_wr_max?: int",
        "-bps_wr_max_length?: int", "-group?: str", "-image.actual-size?: int",
        "-image.backing-filename-format?: str", "-image.backing-filename?: str", "-image.backing-image?: object",
        "-image.cluster-size?: int", "-image.compressed?: bool", "-image.encrypted?: bool", "-image.format-specific?: object",
        "-image.full-backing-filename?: str", "-image.snapshots?: [object]", "-iops_max?: int", "-iops_max_length?: int",
        "-iops_rd_max?: int", "-iops_rd_max_length?: int", "-iops_size?: int", "-iops_wr_max?: int", "-iops_wr_max_length?: int",
    ];

    /// <summary>
    /// Per command both have, the lines of <see cref="SchemaInfoView.ReturnSignature"/> that differ, "+" ours only
    /// (our extras, named <c>__org.blockmirror_*</c> where they are members QEMU could one day add), "-" theirs only.
    /// </summary>
    static readonly Dictionary<string, string[]> ReturnDifferences = new(StringComparer.Ordinal)
    {
        ["query-block-exports"] = ["+__org.blockmirror_clients: int"],
        // QEMU 8.2's actively-synced, and our progress members (README, "Progress").
        ["query-block-jobs"] = ["+actively-synced?: bool", "+converging?: bool", "+copy-rate?: int", "+dirty-rate?: int", "+eta-seconds?: int", "+remaining?: int"],
        // QEMU's other two variants are drivers ours does not have.
        ["query-blockstats"] =
        [
            "-driver-specific.{driver=host_device}discard-bytes-ok: int", "-driver-specific.{driver=host_device}discard-nb-failed: int",
            "-driver-specific.{driver=host_device}discard-nb-ok: int", "-driver-specific.{driver=nvme}aligned-accesses: int",
            "-driver-specific.{driver=nvme}completion-errors: int", "-driver-specific.{driver=nvme}unaligned-accesses: int",
        ],
        ["query-named-block-nodes"] = NodeInfoNotFilled,
        // query-block's list is empty on both; its BlockInfo holds the same BlockDeviceInfo.
        ["query-block"] = [.. NodeInfoNotFilled.Select(l => "-inserted." + l[1..])],
    };

    [SkippableFact]
    public async Task The_commands_both_daemons_have_declare_the_same_return_types_but_for_the_pinned_differences()
    {
        var theirs = await SchemaAsync(DifferentialDaemon.Qsd());
        var ours = await SchemaAsync(DifferentialDaemon.Ours());

        var found = new Dictionary<string, string[]>(StringComparer.Ordinal);
        foreach (var command in ours.Commands.Intersect(theirs.Commands))
        {
            var (mine, qemu) = (ours.ReturnSignature(command), theirs.ReturnSignature(command));
            string[] lines = [.. Outermost(mine.Except(qemu)).Select(l => "+" + l), .. Outermost(qemu.Except(mine)).Select(l => "-" + l)];
            if (lines.Length > 0)
            {
                found[command] = lines;
            }
        }

        Assert.True(found.Count == ReturnDifferences.Count && found.All(f => ReturnDifferences.TryGetValue(f.Key, out var pinned) && pinned.SequenceEqual(f.Value)),
            string.Join("\n", found.Select(f => $"[\"{f.Key}\"] = [{string.Join(", ", f.Value.Select(l => $"\"{l}\""))}],")));
    }

    /// <summary>
    /// The lines not inside a member that is itself among <paramref name="lines"/>: a member one side lacks is one
    /// line, not one per member it holds.
    /// </summary>
    static IEnumerable<string> Outermost(IEnumerable<string> lines)
    {
        var list = lines.ToList();
        var paths = list.Select(l => l.Split(':')[0].TrimEnd('?') + ".").ToList();
        return list.Where(l => !paths.Any(p => l.StartsWith(p, StringComparison.Ordinal)));
    }

    [SkippableFact]
    public async Task The_events_ours_emits_are_declared_as_qemu_declares_them()
    {
        var theirs = await SchemaAsync(DifferentialDaemon.Qsd());
        var ours = await SchemaAsync(DifferentialDaemon.Ours());

        Assert.Subset(theirs.Events.ToHashSet(), ours.Events.ToHashSet());
        foreach (var e in ours.Events)
        {
            Assert.Equal(theirs.Signature(e), ours.Signature(e));
        }
    }

    /// <summary>
    /// query-block and query-block-exports with nodes, two exports and a client connected to one. query-block
    /// is empty on both (a storage daemon has no named BlockBackends); exports are listed newest first. Ours
    /// adds <c>__org.blockmirror_clients</c> to each export, taken out before the comparison and checked here.
    /// </summary>
    [SkippableFact]
    public async Task Query_block_and_query_block_exports_answer_as_qemu_storage_daemon_does()
    {
        var theirs = await QueryAsync(DifferentialDaemon.Qsd());
        var ours = await QueryAsync(DifferentialDaemon.Ours());

        Assert.Equal("[]", theirs.Block);
        var exports = (JsonArray)JsonNode.Parse(ours.Exports)!;
        Assert.Equal([1, 0], exports.Select(e => (int)e!["__org.blockmirror_clients"]!));
        foreach (var export in exports)
        {
            export!.AsObject().Remove("__org.blockmirror_clients");
        }

        Assert.Equal(theirs, (ours.Block, Canonical(exports)));
    }

    async Task<(string Block, string Exports)> QueryAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        (string, string) answers = default;
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk,size=1048576"], "disk", async (qmp, _) =>
        {
            await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = "other", ["size"] = 1 << 20 });
            await qmp.ExecuteAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "exp1", ["node-name"] = "other" });
            // A client of exp1 (our NBD client, in the test's process) stays connected while the daemon answers.
            BlockMirror.Nbd.Client.NbdDrivers.Register();
            await using var graph = new BlockGraph();
            await ImageFiles.OpenAsync(graph, new ImageOpenOptions($"nbd+unix:///other?socket={dir}/nbd.sock", "raw", ReadOnly: true));
            var block = await qmp.ExecuteAsync("query-block");
            var exports = await qmp.ExecuteAsync("query-block-exports");
            answers = (Canonical(block!), Canonical(exports!));
        });
        return answers;
    }

    /// <summary>JSON with each object's members in name order (QEMU writes them in hash order).</summary>
    static string Canonical(JsonNode node) => Sorted(node)!.ToJsonString();

    static JsonNode? Sorted(JsonNode? node) => node switch
    {
        JsonObject obj => new JsonObject(obj.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => KeyValuePair.Create(p.Key, Sorted(p.Value)))),
        JsonArray array => new JsonArray([.. array.Select(Sorted)]),
        _ => node?.DeepClone(),
    };

    /// <summary>
    /// What the declarations refuse, on both daemons: for every command both have (but quit), a member neither
    /// knows, the first required member left out, and each member of QEMU's declaration given a value of the
    /// wrong JSON type. Every one of these fails before anything happens, and the answers must be the same.
    /// </summary>
    [SkippableFact]
    public async Task Arguments_refused_by_the_declarations_get_the_same_errors_on_both_daemons()
    {
        var qsd = DifferentialDaemon.Qsd();
        var schema = await SchemaAsync(qsd);
        var ours = await SchemaAsync(DifferentialDaemon.Ours());
        var ourCommands = ours.Commands.ToHashSet(StringComparer.Ordinal);
        var cases = new List<(string Command, JsonObject Arguments)>();
        foreach (var command in schema.Commands.Where(c => ourCommands.Contains(c) && c is not ("quit" or "qmp_capabilities")))
        {
            var arguments = schema.Arguments(command);
            cases.Add((command, new JsonObject { ["__org.example_unknown"] = 1 }));
            if (arguments["members"]!.AsArray().Any(m => !m!.AsObject().ContainsKey("default")))
            {
                cases.Add((command, []));
            }

            foreach (var member in arguments["members"]!.AsArray())
            {
                var type = schema.Entry((string)member!["type"]!);
                cases.Add((command, new JsonObject { [(string)member["name"]!] = WrongType(type) }));
            }

            // A union's variants that both have: each of their members given the wrong type.
            var ourVariants = ours.Arguments(command)["variants"]?.AsArray().Select(v => (string)v!["case"]!).ToHashSet(StringComparer.Ordinal) ?? [];
            foreach (var variant in arguments["variants"]?.AsArray().Where(v => ourVariants.Contains((string)v!["case"]!)) ?? [])
            {
                foreach (var member in schema.Entry((string)variant!["type"]!)["members"]!.AsArray())
                {
                    cases.Add((command, new JsonObject
                    {
                        [(string)arguments["tag"]!] = (string)variant["case"]!,
                        [(string)member!["name"]!] = WrongType(schema.Entry((string)member["type"]!)),
                    }));
                }
            }
        }

        var theirs = await RefusalsAsync(qsd, cases);
        var mine = await RefusalsAsync(DifferentialDaemon.Ours(), cases);

        Assert.True(cases.Count > 150, $"{cases.Count} cases");
        Assert.Equal(theirs.Count, mine.Count);
        var differing = theirs.Zip(mine).Where(p => p.First != p.Second).Select(p => $"qsd:  {p.First}\nours: {p.Second}").ToList();
        Assert.True(differing.Count == 0, string.Join("\n", differing));
    }

    /// <summary>A value no member of this type takes: a number for a string, a string for anything else.</summary>
    static JsonNode WrongType(JsonObject type) =>
        (string)type["meta-type"]! is "enum" || (string)type["name"]! == "str" || (string)type["meta-type"]! == "alternate" ? 1 : "x";

    async Task<List<string>> RefusalsAsync(DifferentialDaemon daemon, List<(string Command, JsonObject Arguments)> cases)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name + "-refusals");
        Directory.CreateDirectory(dir);
        var replies = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk"], "disk", async (qmp, _) =>
        {
            foreach (var (command, arguments) in cases)
            {
                var reply = await qmp.CommandAsync(command, (JsonObject)arguments.DeepClone());
                replies.Add($"{command} {arguments.ToJsonString()}: " + (reply["error"] is { } error ? $"{error["class"]}: {error["desc"]}" : "succeeded"));
            }
        });
        return replies;
    }
}

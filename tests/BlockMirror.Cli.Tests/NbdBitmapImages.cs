using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// qcow2 images with persistent dirty bitmaps, made by qemu-img and qemu-io only (no BlockMirror code), for the
/// tests of exported bitmaps: the same recipe in each daemon's directory, so both serve the same bits.
/// </summary>
static class NbdBitmapImages
{
    public const long Size = 4 << 20;

    /// <summary>
    /// DIR/base.qcow2 with bitmap <c>bb</c> (enabled, dirty where base was written: [0, 64 KiB)); DIR/top.qcow2 over it
    /// with <c>b0</c> (64 KiB chunks, enabled) and <c>b1</c> (128 KiB chunks, disabled after the first writes): b1 holds
    /// 64 KiB at 64 KiB and 4 KiB at 1 MiB, b0 those and 1 MiB at 3 MiB; DIR/stale.qcow2, whose bitmap <c>stale</c>
    /// is left in use by a qemu-io killed before it closed the image.
    /// </summary>
    public static async Task CreateAsync(string dir)
    {
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", $"{dir}/base.qcow2", $"{Size}");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--enable", $"{dir}/base.qcow2", "bb");
        await QemuIoAsync($"{dir}/base.qcow2", "write -P 1 0 64k");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", $"{dir}/top.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--enable", $"{dir}/top.qcow2", "b0");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--enable", "-g", "128K", $"{dir}/top.qcow2", "b1");
        await QemuIoAsync($"{dir}/top.qcow2", "write -P 2 64k 64k", "write -P 3 1M 4k");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--disable", $"{dir}/top.qcow2", "b1");
        await QemuIoAsync($"{dir}/top.qcow2", "write -P 4 3M 1M");

        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", $"{dir}/stale.qcow2", $"{Size}");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--enable", $"{dir}/stale.qcow2", "stale");
        // qemu-io kills itself with the image open for writing: the bitmap stays marked in use.
        await ExternalTool.RunAsync("qemu-io", ["-c", "write 0 64k", "-c", "sigraise 9", $"{dir}/stale.qcow2"]);
    }

    static async Task QemuIoAsync(string image, params string[] commands)
    {
        var output = await ExternalTool.RunCheckedAsync("qemu-io", [.. commands.SelectMany(c => new[] { "-c", c }), image]);
        Assert.DoesNotContain("failed", output, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>
    /// <c>--blockdev</c> options: <c>base</c> and <c>top</c> (over base) opened writable or read-only as asked, and
    /// <c>stale</c> read-only; and <c>exp</c>, a null-co node for the runner's own export.
    /// </summary>
    public static string[] Blockdevs(string dir, bool readOnly) =>
    [
        "--blockdev", $"driver=file,node-name=base-file,filename={dir}/base.qcow2,read-only=on",
        "--blockdev", "driver=qcow2,node-name=base,file=base-file,read-only=on",
        "--blockdev", $"driver=file,node-name=top-file,filename={dir}/top.qcow2,read-only={(readOnly ? "on" : "off")}",
        "--blockdev", $"driver=qcow2,node-name=top,file=top-file,backing=base,read-only={(readOnly ? "on" : "off")}",
        "--blockdev", $"driver=file,node-name=stale-file,filename={dir}/stale.qcow2,read-only=on",
        "--blockdev", "driver=qcow2,node-name=stale,file=stale-file,read-only=on",
        "--blockdev", $"driver=null-co,node-name=exp,size={Size}",
    ];
}

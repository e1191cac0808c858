using System.Diagnostics;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror serve</c> killed with SIGKILL in the middle of a mirror that keeps a write-intent log, started
/// again with the same nodes: blockdev-mirror with <c>__org.blockmirror_resume</c> continues the job, copying no
/// more than the log marks, and the target ends equal to the source with every write the guest saw acknowledged.
/// </summary>
public sealed class MirrorResumeServeTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-resume-serve-");

    public void Dispose() => _dir.Dispose();

    sealed class Daemon(Process process, QmpClient qmp) : IAsyncDisposable
    {
        public QmpClient Qmp { get; } = qmp;

        public async Task KillAsync()
        {
            process.Kill();
            await process.WaitForExitAsync();
        }

        public async ValueTask DisposeAsync()
        {
            if (!process.HasExited)
            {
                process.Kill();
            }

            await process.WaitForExitAsync();
            await Qmp.DisposeAsync();
            process.Dispose();
        }
    }

    async Task<Daemon> StartAsync(string source, string target)
    {
        var ours = DifferentialDaemon.Ours();
        var dir = _dir.Path;
        // A killed daemon leaves its sockets behind.
        File.Delete($"{dir}/qmp.sock");
        File.Delete($"{dir}/nbd.sock");
        var start = new ProcessStartInfo(ours.Program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in (string[])[
            .. ours.Prefix,
            "--blockdev", $"driver=raw,node-name=src,file.driver=file,file.filename={source}",
            "--blockdev", $"driver=raw,node-name=tgt,file.driver=file,file.filename={target}",
            "--chardev", $"socket,id=mon0,path={dir}/qmp.sock,server=on,wait=off", "--monitor", "chardev=mon0",
            "--nbd-server", $"addr.type=unix,addr.path={dir}/nbd.sock",
            "--export", "type=nbd,id=exp0,node-name=src,name=disk,writable=on"])
        {
            start.ArgumentList.Add(argument);
        }

        var process = Process.Start(start)!;
        _ = process.StandardOutput.ReadToEndAsync();
        _ = process.StandardError.ReadToEndAsync();
        return new Daemon(process, await QmpClient.ConnectAsync($"{dir}/qmp.sock"));
    }

    static JsonObject Mirror(params (string Key, JsonNode Value)[] more)
    {
        var arguments = new JsonObject { ["job-id"] = "j0", ["device"] = "src", ["target"] = "tgt", ["sync"] = "full" };
        foreach (var (key, value) in more)
        {
            arguments[key] = value;
        }

        return arguments;
    }

    [SkippableFact]
    public async Task A_killed_daemon_started_again_resumes_the_mirror_from_its_log()
    {
        ExternalTool.Require("qemu-io");
        var source = _dir.File("source.raw");
        var target = _dir.File("target.raw");
        await QemuImages.CreateAsync(source, "8M", "write -P 0x11 0 8M");
        await QemuImages.CreateAsync(target, "8M");
        var uri = $"nbd+unix:///disk?socket={_dir.Path}/nbd.sock";
        var log = source + ".blockmirror-wil";

        await using (var first = await StartAsync(source, target))
        {
            // Slow enough that the kill lands in the bulk copy.
            var reply = await first.Qmp.CommandAsync("blockdev-mirror", Mirror(("speed", 2 << 20), ("__org.blockmirror_write-intent-log", true)));
            Assert.Null(reply["error"]);
            Assert.True(File.Exists(log));
            await ImageRecipes.QemuIoAsync(uri, "raw", ["write -P 0x22 7M 64k", "write -P 0x33 100k 8k"]);

            // Killed once the log has cleared some copied regions (lazily, a few seconds in), before the copy ends.
            using var patience = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            while (WriteIntentLogFile.MarkedBytes(log) == 8 << 20)
            {
                await Task.Delay(50, patience.Token);
            }

            await first.KillAsync();
        }

        Assert.True(File.Exists(log), "the log must outlive a crash");
        var marked = WriteIntentLogFile.MarkedBytes(log);
        Assert.InRange(marked, 1, (8 << 20) - 1);

        await using var second = await StartAsync(source, target);
        // A new job must not overwrite the crashed one's log; the resume takes it.
        var refused = await second.Qmp.CommandAsync("blockdev-mirror", Mirror(("__org.blockmirror_write-intent-log", true)));
        Assert.Contains("A write-intent log of an earlier mirror from 'src'", (string?)refused["error"]?["desc"], StringComparison.Ordinal);
        Assert.Null((await second.Qmp.CommandAsync("blockdev-mirror", Mirror(("__org.blockmirror_resume", true))))["error"]);
        await second.Qmp.WaitEventAsync("BLOCK_JOB_READY");
        var offset = (long)(await second.Qmp.ExecuteAsync("query-block-jobs"))!.AsArray()[0]!["offset"]!;
        Assert.True(offset <= marked, $"the resumed job copied {offset} bytes, the log marked {marked}");
        await second.Qmp.ExecuteAsync("block-job-complete", new() { ["device"] = "j0" });
        await DifferentialDaemon.WaitJobGoneAsync(second.Qmp);
        Assert.False(File.Exists(log), "a completed job left its log");

        // Nothing left to resume now.
        var none = await second.Qmp.CommandAsync("blockdev-mirror", new JsonObject { ["job-id"] = "j1", ["device"] = "tgt", ["target"] = "src", ["sync"] = "full", ["__org.blockmirror_resume"] = true });
        Assert.Contains("Nothing to resume", (string?)none["error"]?["desc"], StringComparison.Ordinal);
        await second.Qmp.ExecuteAsync("quit");
        await QemuImages.AssertIdenticalAsync(source, target);
        await ImageRecipes.QemuIoAsync(target, "raw", ["read -P 0x22 7M 64k", "read -P 0x33 100k 8k", "read -P 0x11 0 100k"]);
    }
}

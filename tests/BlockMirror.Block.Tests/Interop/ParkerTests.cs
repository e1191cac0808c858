using BlockMirror.Block.Interop;

namespace BlockMirror.Block.Tests.Interop;

/// <summary>The futex parker under the file driver's I/O threads: no wake is lost, none is invented.</summary>
public sealed class ParkerTests
{
    [Fact]
    public void A_wake_before_the_sleep_is_kept_and_used_once()
    {
        var parker = new Parker();
        parker.Unpark();
        parker.Unpark();

        Assert.True(parker.Park(TimeSpan.FromSeconds(10)));
        Assert.False(parker.Park(TimeSpan.FromMilliseconds(20)));
    }

    [Fact]
    public async Task A_sleeper_wakes_for_every_handoff_and_times_out_without_one()
    {
        const int Rounds = 2000;
        var parker = new Parker();
        var acknowledged = new SemaphoreSlim(0);
        var woken = 0;
        var sleeper = Task.Factory.StartNew(() =>
        {
            for (var i = 0; i < Rounds; i++)
            {
                Assert.True(parker.Park(TimeSpan.FromSeconds(10)), $"round {i} timed out");
                woken++;
                acknowledged.Release();
            }

            return parker.Park(TimeSpan.FromMilliseconds(50));
        }, TaskCreationOptions.LongRunning);

        for (var i = 0; i < Rounds; i++)
        {
            parker.Unpark();
            Assert.True(await acknowledged.WaitAsync(TimeSpan.FromSeconds(10)));
        }

        Assert.False(await sleeper);
        Assert.Equal(Rounds, woken);
    }
}

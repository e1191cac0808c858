using System.Threading.Tasks.Sources;

namespace BlockMirror.Block.Drivers.File;

/// <summary>
/// The awaitable side of one pooled file call, shared by both I/O engines: the caller awaits it as a
/// ValueTask, ValueTask&lt;int&gt; or ValueTask&lt;long&gt; (the one result, a count or an errno, fits a long),
/// and it goes back to its engine's pool once the caller has taken the result.
/// </summary>
/// <remarks>
/// Continuations run where the call completes (the engine's thread), never queued to the .NET pool: the
/// core's RunContinuationsAsynchronously stays false.
/// </remarks>
abstract class PooledFileCall : IValueTaskSource<int>, IValueTaskSource<long>, IValueTaskSource
{
    ManualResetValueTaskSourceCore<long> _core;

    public short Version => _core.Version;

    protected void SetResult(long result) => _core.SetResult(result);

    protected void SetException(Exception error) => _core.SetException(error);

    /// <summary>Puts the call back in its engine's pool (after the caller took its result; the core is reset).</summary>
    protected abstract void ReturnToPool();

    long GetResultAndReturn(short token)
    {
        try
        {
            return _core.GetResult(token);
        }
        finally
        {
            _core.Reset();
            ReturnToPool();
        }
    }

    int IValueTaskSource<int>.GetResult(short token) => (int)GetResultAndReturn(token);

    long IValueTaskSource<long>.GetResult(short token) => GetResultAndReturn(token);

    void IValueTaskSource.GetResult(short token) => GetResultAndReturn(token);

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}

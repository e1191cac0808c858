namespace BlockMirror.Block.Drivers.File;

/// <summary>
/// The free calls of one I/O engine, for reuse: a call is rented for a request and returned once its
/// caller took the result, so requests allocate nothing. Holds at most <see cref="Capacity"/>, about the
/// most that are ever in flight at once; a call returned beyond that is left to the caller to drop.
/// </summary>
sealed class FileCallPool<T>(Func<T> create) where T : class
{
    public const int Capacity = 256;

    readonly Lock _lock = new();
    readonly Stack<T> _free = new();

    public T Rent()
    {
        lock (_lock)
        {
            if (_free.TryPop(out var call))
            {
                return call;
            }
        }

        return create();
    }

    /// <summary>False when the pool is full and <paramref name="call"/> was not kept.</summary>
    public bool Return(T call)
    {
        lock (_lock)
        {
            if (_free.Count < Capacity)
            {
                _free.Push(call);
                return true;
            }
        }

        return false;
    }

    /// <summary>Takes a free call out for good (an engine shutting down releases what its calls hold).</summary>
    public bool TryTake(out T call)
    {
        lock (_lock)
        {
            return _free.TryPop(out call!);
        }
    }
}

// A queue on a Redis that may evict keys or forget them on restart loses jobs silently. At start the worker and the
// chat bots read Redis's eviction policy and persistence settings and warn when they are unsafe. A managed Redis that
// disables CONFIG is not an error: the check says it could not look, and the process carries on.
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

export interface RedisPolicy {
  /** Whether CONFIG GET answered (managed services often disable it). */
  readable: boolean;
  maxmemoryPolicy?: string;
  appendonly?: boolean;
  /** RDB snapshot rules (`save`); empty when snapshots are off. */
  save?: string;
  problems: string[];
}

async function configValue(redis: Redis, name: string): Promise<string | undefined> {
  const answer = (await redis.call('CONFIG', 'GET', name)) as string[];
  return answer.length >= 2 ? String(answer[1]) : undefined;
}

export async function readRedisPolicy(redis: Redis): Promise<RedisPolicy> {
  let maxmemoryPolicy: string | undefined;
  let appendonly: string | undefined;
  let save: string | undefined;
  try {
    [maxmemoryPolicy, appendonly, save] = [await configValue(redis, 'maxmemory-policy'), await configValue(redis, 'appendonly'), await configValue(redis, 'save')];
  } catch {
    return { readable: false, problems: [] };
  }
  const problems: string[] = [];
  if (maxmemoryPolicy !== undefined && maxmemoryPolicy !== 'noeviction') {
    problems.push(`maxmemory-policy is ${maxmemoryPolicy}: when memory is full Redis deletes keys, queued jobs among them (set maxmemory-policy noeviction)`);
  }
  const aof = appendonly === 'yes';
  if (appendonly !== undefined && !aof && !save) {
    problems.push('persistence is off (appendonly no, no save rules): a Redis restart loses every queued job (set appendonly yes)');
  }
  return { readable: true, maxmemoryPolicy, appendonly: appendonly === undefined ? undefined : aof, save, problems };
}

/** Reads the policy and logs one warning per problem (or one line saying it could not be read); never throws. */
export async function checkRedisPolicy(redis: Redis, logger: Pick<Logger, 'warn' | 'info'>, who: string, timeoutMs = 5000): Promise<RedisPolicy> {
  let policy: RedisPolicy;
  let timer: NodeJS.Timeout | undefined;
  try {
    // A Redis that is down at start must not hold the start up: the connections reconnect on their own.
    const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs); });
    policy = await Promise.race([readRedisPolicy(redis), late]);
  } catch (error) {
    logger.warn({ err: error, who }, 'could not check the Redis eviction policy and persistence');
    return { readable: false, problems: [] };
  } finally {
    clearTimeout(timer);
  }
  if (!policy.readable) {
    logger.info({ who }, 'Redis does not allow CONFIG GET (a managed Redis?): make sure it uses maxmemory-policy noeviction and persistence (AOF) for the queues');
  }
  for (const problem of policy.problems) logger.warn({ who, redisPolicy: problem }, `Redis is unsafe for a job queue: ${problem}`);
  return policy;
}

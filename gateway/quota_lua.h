/*
 * quota_lua.h — the Lua scripts of the Redis quota backend (gateway/quota.c), as C strings.
 *
 * Admission: KEYS = 3 per check (current counter, previous-minute counter, alert marker); ARGV = now_ms, n,
 * reservation id, alert threshold, lease_ms, then 6 per check: kind, limit, cost, ms into the minute, expiry
 * (Unix ms) of the counter, end (Unix ms) of the window. Every check is evaluated first; only if all pass is
 * anything written, so a refusal reserves nothing. Reply: {allowed, refused check (1-based, 0 = none)} then
 * per check {remaining, retry_ms, reset_ms, alert fired, used after}. The arithmetic is the C backend's:
 * integers below 2^53, so Lua's doubles are exact.
 *
 * Settlement: KEYS = the reserved keys; ARGV = reservation id, then 2 per key: kind, delta. Counters that
 * still exist move by delta (never below 0); concurrency leases are removed.
 */
#ifndef LEO_QUOTA_LUA_H
#define LEO_QUOTA_LUA_H

static const char leo_quota_lua_admit[] =
    "local now=tonumber(ARGV[1]) local n=tonumber(ARGV[2]) local id=ARGV[3]\n"
    "local th=tonumber(ARGV[4]) local lease=tonumber(ARGV[5]) local W=60000\n"
    "local out={1,0} local ok_all=true\n"
    "local function num(k) local v=tonumber(redis.call('GET',k) or '0') if v<0 then return 0 end return v end\n"
    "for i=1,n do\n"
    "  local a=5+(i-1)*6 local kind=ARGV[a+1] local L=tonumber(ARGV[a+2]) local cost=tonumber(ARGV[a+3])\n"
    "  local e=tonumber(ARGV[a+4]) local wend=tonumber(ARGV[a+6]) local k=KEYS[(i-1)*3+1]\n"
    "  local ok local rem local retry=0 local reset=0 local used\n"
    "  if kind=='rpm' or kind=='tpm' then\n"
    "    local cur=num(k) local prev=num(KEYS[(i-1)*3+2])\n"
    "    local uw=prev*(W-e)+cur*W\n"
    "    ok=(uw+cost*W<=L*W)\n"
    "    local aw=uw if ok then aw=uw+cost*W end\n"
    "    if aw>=L*W then rem=0 else rem=math.floor((L*W-aw)/W) end\n"
    "    used=math.floor((uw+cost*W+W-1)/W)\n"
    "    local ca=cur if ok then ca=cur+cost end\n"
    "    if ca>0 then reset=(W-e)+W elseif prev>0 then reset=W-e end\n"
    "    if not ok then\n"
    "      if cur+cost<=L then retry=(W-math.floor((L-cur-cost)*W/prev))-e\n"
    "      elseif cost<=L then retry=(W-e)+(W-math.floor((L-cost)*W/cur))\n"
    "      else retry=(W-e)+W end\n"
    "      if retry<1 then retry=1 end\n"
    "    end\n"
    "  else\n"
    "    local v\n"
    "    if kind=='concurrency' then\n"
    "      redis.call('ZREMRANGEBYSCORE',k,'-inf',now) v=redis.call('ZCARD',k)\n"
    "    else v=num(k) end\n"
    "    ok=(v+cost<=L)\n"
    "    local after=v if ok then after=v+cost end\n"
    "    if after>=L then rem=0 else rem=L-after end\n"
    "    used=v+cost\n"
    "    if kind=='concurrency' then if not ok then retry=1000 end\n"
    "    else reset=wend-now if not ok then retry=wend-now end end\n"
    "  end\n"
    "  if not ok and ok_all then ok_all=false out[1]=0 out[2]=i end\n"
    "  local b=2+(i-1)*5\n"
    "  out[b+1]=rem out[b+2]=retry out[b+3]=reset out[b+4]=0 out[b+5]=used\n"
    "end\n"
    "if not ok_all then return out end\n"
    "for i=1,n do\n"
    "  local a=5+(i-1)*6 local kind=ARGV[a+1] local L=tonumber(ARGV[a+2]) local cost=tonumber(ARGV[a+3])\n"
    "  local exp=tonumber(ARGV[a+5]) local wend=tonumber(ARGV[a+6]) local k=KEYS[(i-1)*3+1]\n"
    "  if kind=='concurrency' then\n"
    "    redis.call('ZADD',k,now+lease,id)\n"
    "    if redis.call('PTTL',k)<lease then redis.call('PEXPIRE',k,lease) end\n"
    "  else\n"
    "    redis.call('INCRBY',k,cost) redis.call('PEXPIREAT',k,exp)\n"
    "  end\n"
    "  local b=2+(i-1)*5\n"
    "  if th>0 and out[b+5]>=th*L and wend>now then\n"
    "    if redis.call('SET',KEYS[(i-1)*3+3],'1','NX','PXAT',wend) then out[b+4]=1 end\n"
    "  end\n"
    "end\n"
    "return out\n";

static const char leo_quota_lua_settle[] =
    "local id=ARGV[1]\n"
    "for i=1,#KEYS do\n"
    "  local kind=ARGV[2*i] local d=tonumber(ARGV[2*i+1]) local k=KEYS[i]\n"
    "  if kind=='concurrency' then redis.call('ZREM',k,id)\n"
    "  elseif d~=0 and redis.call('EXISTS',k)==1 then\n"
    "    if redis.call('INCRBY',k,d)<0 then redis.call('SET',k,'0','KEEPTTL') end\n"
    "  end\n"
    "end\n"
    "return 1\n";

#endif

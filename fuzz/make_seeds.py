"""Writes the hand-made seed inputs of fuzz/corpus/ (except pdu_storage, whose records come from
the firmware's own encoder: `storage::encode` of the factory configuration and of one with
quotes and markup in its names, an old version-1 record, and a torn copy).

Run from anywhere: python3 fuzz/make_seeds.py
"""
import os, struct
here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, 'corpus')
def w(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    open(os.path.join(d, name), 'wb').write(data)

# --- HLW8032 ---
def u24(v): return v.to_bytes(3, 'big')
def hlw(state, vp, vr, cp, cr, pp, pr, upd, pf):
    body = u24(vp)+u24(vr)+u24(cp)+u24(cr)+u24(pp)+u24(pr)+bytes([upd])+pf.to_bytes(2,'big')
    return bytes([state, 0x5A]) + body + bytes([sum(body) & 0xFF])
f230 = hlw(0x55, 0x02A158, 0x000A4C, 0x003E80, 0x001F40, 0x4C4B40, 0x00BB80, 0x71, 0x1234)
noload = hlw(0xFA, 0x02A158, 0x000A4C, 0x003E80, 0xFFFFFF, 0x4C4B40, 0xFFFFFF, 0x40, 0x0000)
w('hlw8032_frame', 'frame_230v_2a', f230 + struct.pack('<ffff', 1.88, 1.0, 0.0, 0.0))
w('hlw8032_frame', 'frame_no_load_0xfa', noload)
w('hlw8032_frame', 'not_calibrated_0xaa', hlw(0xAA, 1, 2, 3, 4, 5, 6, 0x70, 7))
w('hlw8032_frame', 'stream_mid_frame_then_two', f230[9:] + b'\x00\xff' + f230 + noload)

# --- FluidNC ---
w('fluidnc_line', 'banner_and_oks', "\r\nGrbl 3.9 [FluidNC v3.9.9 (wifi) '$' for help]\r\nok\r\nok\r\nok\r\n")
w('fluidnc_line', 'status_reports', "<Idle|MPos:0.000,0.000,0.000,0.000|FS:0,0|WCO:0.000,0.000,0.000,0.000>\r\nok\r\n<Run|WPos:1.250,-0.500,2.000,0.000|FS:60.0,0|Ov:100,100,100>\r\nok\n<Hold:1|MPos:1.000,2.000,3.000,4.000,5.000,6.000|F:12.5>\n")
w('fluidnc_line', 'errors_alarms_feedback', "error:20\r\nALARM:1\r\n[MSG:INFO: Reset to continue]\r\n[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]\r\n$100=80.000\r\n[VER:3.9 FluidNC v3.9.9:]\r\nok\r\n")
w('fluidnc_line', 'soft_reset_then_banner', "ok\r\n\x18ok\r\n\x1aGrbl 3.9 [FluidNC v3.9.9]\r\nok\r\n\x19ok\r\n")

# --- SNMP ---
def tlv(tag, content): 
    n = len(content)
    if n < 0x80: l = bytes([n])
    elif n < 0x100: l = bytes([0x81, n])
    else: l = bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + l + content
def integer(v):
    b = v.to_bytes(8, 'big', signed=True)
    while len(b) > 1 and ((b[0] == 0 and b[1] < 0x80) or (b[0] == 0xFF and b[1] >= 0x80)): b = b[1:]
    return tlv(0x02, b)
def oid(arcs):
    out = bytes([arcs[0]*40 + arcs[1]])
    for a in arcs[2:]:
        enc = [a & 0x7F]; a >>= 7
        while a: enc.insert(0, 0x80 | (a & 0x7F)); a >>= 7
        out += bytes(enc)
    return tlv(0x06, out)
null = tlv(0x05, b'')
def msg(version, community, pdu_tag, req_id, e1, e2, varbinds):
    vbl = tlv(0x30, b''.join(tlv(0x30, oid(o) + v) for o, v in varbinds))
    pdu = tlv(pdu_tag, integer(req_id) + integer(e1) + integer(e2) + vbl)
    return tlv(0x30, integer(version) + tlv(0x04, community) + pdu)
sys = lambda n: [1,3,6,1,2,1,1,n,0]
ent = [1,3,6,1,4,1,19865]
w('snmp_agent', 'v1_get_sysdescr', msg(0, b'public', 0xA0, 1, 0, 0, [(sys(1), null)]))
w('snmp_agent', 'v2c_get_outlets_and_uptime', msg(1, b'public', 0xA0, -7, 0, 0, [(ent+[2,1,0], null), (ent+[2,2,0], null), (sys(3), null)]))
w('snmp_agent', 'v2c_getnext_walk_start', msg(1, b'public', 0xA1, 0x1234, 0, 0, [([1,3,6,1], null)]))
w('snmp_agent', 'v2c_getbulk', msg(1, b'public', 0xA5, 99, 1, 5, [(sys(1), null), (ent, null)]))
w('snmp_agent', 'v2c_set_outlet_private', msg(1, b'private', 0xA3, 42, 0, 0, [(ent+[2,1,0], integer(1)), (ent+[2,3,0], integer(0))]))
w('snmp_agent', 'v1_set_with_read_community', msg(0, b'public', 0xA3, 43, 0, 0, [(ent+[2,1,0], integer(1))]))

# --- PDU HTTP ---
auth = "Authorization: Basic YWRtaW46ZW5lcmdpcw==\r\n"
def post(path, body, a=True):
    return f"POST {path} HTTP/1.1\r\nHost: pdu\r\n{auth if a else ''}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n{body}"
w('pdu_http', 'get_status', "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.14.1\r\nAccept: */*\r\n\r\n")
w('pdu_http', 'get_metrics', "GET /metrics HTTP/1.1\r\nHost: pdu\r\n\r\n")
w('pdu_http', 'head_settings', "HEAD /api/settings?x=1 HTTP/1.1\r\nHost: pdu\r\n\r\n")
w('pdu_http', 'options_preflight', "OPTIONS /api/control HTTP/1.1\r\nHost: pdu\r\nOrigin: http://x\r\nAccess-Control-Request-Method: POST\r\n\r\n")
w('pdu_http', 'post_control', post('/api/control', 'channel1=on&channel2=on&label2=NAS%20box&label3=UPS+1'))
w('pdu_http', 'post_settings', post('/api/settings', 'ip=192.168.0.50&device_name=Rack+2&temp_unit=F&location=Wien'))
w('pdu_http', 'post_without_credentials', post('/api/control', 'channel1=on', a=False))
w('pdu_http', 'get_page', "GET / HTTP/1.0\r\n\r\n")

# --- Pump HTTP ---
pauth = "Authorization: Basic YWRtaW46cHVtcGN0bA==\r\n"
def ppost(path, body, a=True):
    return f"POST {path} HTTP/1.1\r\nHost: pump\r\n{pauth if a else ''}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
w('pump_http', 'get_status', "GET /api/status HTTP/1.1\r\nHost: pump\r\n\r\n")
w('pump_http', 'get_recipes', "GET /api/recipes?fmt=json HTTP/1.1\r\nHost: pump\r\n\r\n")
w('pump_http', 'start_dispense', ppost('/api/pump/start', '{"pump":"X","volume_ml":5,"flow_ml_min":60}'))
w('pump_http', 'start_flowrate_alias', ppost('/api/pump/start', '{"pump":"a","volume_ml":0.5,"flowRate":12.5}'))
w('pump_http', 'stop', ppost('/api/stop', ''))
w('pump_http', 'estop_without_credentials', ppost('/api/estop', '', a=False))
w('pump_http', 'recipe_percent_name', ppost('/api/recipe/start/gin%20tonic', ''))
w('pump_http', 'websocket_upgrade', f"GET /ws HTTP/1.1\r\nHost: pump\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{pauth}\r\n")

# --- PDU console ---
w('pdu_console', 'help_and_info', "HELP\r\nSYSINFO\r\nGET_TEMP\r\nGET_SUPPLY\r\nGET_USB\r\n")
w('pdu_console', 'switching', "SET_CH 1 ON\r\nSET_CH ALL 0\nGET_CH ALL\r\nOC_STATUS\r\nOC_RESET\r\nREAD_HLW8032 ALL\r\nCLR_ERR\r\n")
w('pdu_console', 'config_edit_save', "CONFIG SET identity.device_name Rack 2\r\nCONFIG SET label.3 NAS\r\nCONFIG SET ocp.limit_a 12.5\r\nCONFIG GET\r\nCONFIG SAVE\r\n")
w('pdu_console', 'network_and_calibration', "SET_IP 192.168.0.50\r\nSET_GW 192.168.0.1\r\nSET_SN 255.255.255.0\r\nSET_DNS 1.1.1.1\r\nCALIBRATE 1 230 0.5\r\nCALIBRATE 2 0 0\r\n")
w('pdu_console', 'editing_and_errors', "SET_CHX\x7f 1 ON\r\n\x1b[A\r\nLOG_LEVEL 4\r\nSET_COMMUNITY read pub2\r\nSET_HTTP_AUTH off\r\nCONFIG DISCARD\r\nRFS\r\n" + "A"*140 + "\r\n")

# --- pump commands (MQTT) and WebSocket ---
for t in ('pump_command', 'pump_ws'):
    w(t, 'start', '{"cmd":"start","pump":"X","volume_ml":5,"flow_ml_min":60}')
    w(t, 'dispense_flowrate', '{"cmd":"dispense","pump":"z","volume_ml":1.5e1,"flowRate":30}')
    w(t, 'stop', '{"cmd":"stop"}')
    w(t, 'estop_resume', ' {"cmd":"estop", "extra":[1,{"a":null}]} ')
    w(t, 'recipe', '{"cmd":"recipe","name":"mojito"}')
    w(t, 'recipe_escaped', '{"cmd":"recipe","name":"\\"quoted\\""}')

# --- link frames ---
def crc16(data):
    c = 0xFFFF
    for b in data:
        c ^= b << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
    return c
def cobs(data):
    out = bytearray(); block = bytearray()
    for b in data:
        if b == 0:
            out.append(len(block)+1); out += block; block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255); out += block; block = bytearray()
    out.append(len(block)+1); out += block
    return bytes(out) + b'\x00'
def frame(kind, session, seq, ack, payload=b''):
    body = bytes([kind]) + struct.pack('<H', session) + bytes([seq, ack]) + payload
    return cobs(body + struct.pack('<H', crc16(body)))
assert crc16(b'123456789') == 0x29B1
# MotionCommand: 0 Dispense(Vec<DispenseRequest>) 1 StartRecipe 2 Stop 3 EmergencyStop 4 Resume
disp = bytes([0, 1, 0]) + struct.pack('<ff', 5.0, 60.0)   # one dose: pump X, 5 ml at 60 ml/min
recipe = bytes([1, 6]) + b'mojito'
w('pump_link', 'data_frames_in_order', frame(1, 0xB, 0, 0, disp) + frame(1, 0xB, 1, 0, recipe) + frame(1, 0xB, 2, 1, b'\x02'))
w('pump_link', 'acks_for_own_window', frame(2, 0xB, 0, 1) + frame(2, 0xB, 0, 3))
w('pump_link', 'restart_new_session', frame(1, 0xB, 0, 0, b'\x04') + frame(1, 0xC, 0, 0, b'\x02') + b'\x01\x02\x00')
w('pump_link', 'garbage_then_frame', b'\x55\xaa\x13\x00' + bytes(range(1, 120)) + b'\x00' + frame(1, 0xB, 0, 2, b'\x02'))

# --- scenario files ---
w('scenario_file', 'minimal', '[[test]]\nname = "boots"\nduration = "1s"\n\n[test.devices.pdu]\nkind = "pdu"\n\n[[test.expect]]\nstate = "pdu.boots"\nequals = 1\n')
w('scenario_file', 'steps_expect_variant', open(os.path.join(here, '..', 'scenarios', 'pdu', 'storage.toml')).read().split('[[test.variant]]')[0] + '[[test.variant]]\nname = "no_failure"\nbreaks = ["save-failed"]\ndrop_steps = ["fail"]\n')
w('scenario_file', 'bad_key', '[[test]]\nname = "x"\nduration = "1s"\nbogus = 3\n')
